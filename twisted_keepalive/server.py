"""
L{KeepaliveServerFactory}: evicts silent clients, knows who is connected,
pushes to them, refuses abuse, and shuts down gracefully.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .config import HeartbeatConfig
from .errors import (
    CloseCode,
    ClosedLocally,
    HandshakeTimeout,
    HeartbeatTimeout,
    LocalProtocolError,
    PeerClosed,
    ProtocolViolation,
    RemoteProtocolError,
)
from .frames import Hello
from .heartbeat import HeartbeatProtocol, describePeer, maybeGlobalReactor
from .session import Overflow, QueueFull, Session
from .sweep import IdleSweeper


class DisconnectReason(Enum):
    """
    Why a client left, as the disconnect hook and the metrics tell it.
    """

    EVICTED = "evicted"  # silent past the idle timeout
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    CLOSED_BY_PEER = "closed-by-peer"
    AUTH = "auth"
    LIMIT = "limit"  # refused: too many connections
    TOO_MANY_PINGS = "too-many-pings"
    SLOW_CONSUMER = "slow-consumer"
    PROTOCOL_ERROR = "protocol-error"
    SHUTDOWN = "shutdown"
    REPLACED = "replaced"  # a newer connection took its client id
    CLOSED = "closed"  # closed by the application
    LOST = "lost"  # the transport went away

    @classmethod
    def classify(cls, reason: Failure) -> DisconnectReason:
        value = reason.value
        if isinstance(value, HeartbeatTimeout):
            return cls.EVICTED
        if isinstance(value, HandshakeTimeout):
            return cls.HANDSHAKE_TIMEOUT
        if isinstance(value, PeerClosed):
            return cls.CLOSED_BY_PEER
        if isinstance(value, ProtocolViolation):
            return cls.AUTH if value.code == CloseCode.AUTH_FAILED else cls.PROTOCOL_ERROR
        if isinstance(value, ClosedLocally):
            if value.reason == _REPLACED:
                return cls.REPLACED
            return _BY_CODE.get(value.code, cls.CLOSED)
        return cls.LOST


_REPLACED = "replaced by a newer connection with the same client id"
_BY_CODE: dict[int, DisconnectReason] = {
    CloseCode.TOO_MANY_CONNECTIONS: DisconnectReason.LIMIT,
    CloseCode.TOO_MANY_PINGS: DisconnectReason.TOO_MANY_PINGS,
    CloseCode.SLOW_CONSUMER: DisconnectReason.SLOW_CONSUMER,
    CloseCode.GOING_AWAY: DisconnectReason.SHUTDOWN,
}


@dataclass(frozen=True)
class ConnectionInfo:
    """
    One live connection, as the registry and the status view show it.
    Times are clock seconds (epoch seconds with the real reactor).
    """

    peer: str
    clientId: str | None
    connectedSince: float
    lastReceived: float
    rtt: float | None
    framesIn: int
    framesOut: int
    bytesIn: int
    bytesOut: int


class ServerProtocol(HeartbeatProtocol):
    """
    The default server-side protocol: hands each message to its factory's
    L{KeepaliveServerFactory.messageReceived} hook.  Subclass it (or
    L{HeartbeatProtocol}) to handle messages in the protocol instead.
    """

    def messageReceived(self, message: bytes) -> None:
        self.factory.messageReceived(self, message)


class KeepaliveServerFactory(ServerFactory):
    """
    Serve L{HeartbeatProtocol} (or a subclass) connections.

    Idle eviction (after C{heartbeatConfig.timeout} of silence) is exact and
    costs one timer for all connections: an L{IdleSweeper} every
    C{sweepPeriod} seconds, plus a one-shot timer for each connection about
    to expire (measured against the alternatives in bench/eviction_timers.py).

    Hooks (override or assign): L{clientConnected}, L{clientDisconnected},
    L{messageReceived}.

    @ivar heartbeatConfig: C{interval} is the longest ping interval a client
        may use, C{timeout} the idle eviction time, C{token} the shared
        secret required in HELLO, C{maxFrame} and C{handshakeTimeout} as
        named.
    @ivar maxConnections: connections beyond this get CLOSE
        TOO_MANY_CONNECTIONS with a retry-after hint of C{fullRetryAfter}
        seconds spread by up to 100 %.
    @ivar pingTolerance: a PING arriving sooner than C{pingTolerance x
        interval} after the previous one is a strike; after C{maxPingStrikes}
        strikes the client is closed with TOO_MANY_PINGS (gRPC's rule).
    @ivar evictions: clients dropped for silence since start.
    @ivar counts: disconnects by L{DisconnectReason}.
    """

    protocol: type[HeartbeatProtocol] = ServerProtocol
    log = Logger()

    def __init__(
        self,
        heartbeatConfig: HeartbeatConfig | None = None,
        *,
        maxConnections: int | None = None,
        fullRetryAfter: float = 5.0,
        pingTolerance: float = 0.5,
        maxPingStrikes: int = 2,
        sweepPeriod: float = 1.0,
        sessionGrace: float | None = 60.0,
        sessionBuffer: int = 10_000,
        sessionBytes: int = 16 << 20,
        sessionOverflow: Overflow = Overflow.RAISE,
        clock: IReactorTime | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if maxConnections is not None and maxConnections < 0:
            raise ValueError(f"maxConnections must be >= 0, not {maxConnections!r}")
        if not 0 <= pingTolerance <= 1:
            raise ValueError(f"pingTolerance must be between 0 and 1, not {pingTolerance!r}")
        self.heartbeatConfig = heartbeatConfig or HeartbeatConfig()
        self.maxConnections = maxConnections
        self.fullRetryAfter = fullRetryAfter
        self.pingTolerance = pingTolerance
        self.maxPingStrikes = maxPingStrikes
        self.clock = clock
        self.random = random
        self.connections: set[HeartbeatProtocol] = set()
        self.byClientId: dict[str, HeartbeatProtocol] = {}
        self.evictions = 0
        self.counts: dict[DisconnectReason, int] = {r: 0 for r in DisconnectReason}
        self._strikes: dict[HeartbeatProtocol, int] = {}
        self._refused: set[HeartbeatProtocol] = set()
        self._shutdown: Deferred[None] | None = None
        self._shutdownCall: IDelayedCall | None = None
        self.sweepPeriod = sweepPeriod
        if sessionGrace is not None and not sessionGrace >= 0:
            raise ValueError(f"sessionGrace must be >= 0 seconds or None, not {sessionGrace!r}")
        self.sessionGrace = sessionGrace
        self.sessionBuffer = sessionBuffer
        self.sessionBytes = sessionBytes
        self.sessionOverflow = sessionOverflow
        #: Sessions by id: attached to a connection, or within their grace
        #: period after it was lost.
        self.sessions: dict[bytes, Session] = {}
        self._sessionOwner: dict[bytes, HeartbeatProtocol] = {}
        self._graceCalls: dict[bytes, IDelayedCall] = {}
        self.sessionsExpired = 0
        self.sessionsResumed = 0
        #: Pushes (send, broadcast) a recipient could not take: closed as a
        #: slow consumer (its session buffer full) or skipped (too large).
        self.slowConsumers = 0
        self.pushRefused = 0
        self._sweeper: IdleSweeper | None = None

    @property
    def _clock(self) -> IReactorTime:
        return maybeGlobalReactor(self.clock)

    @property
    def idleSweeper(self) -> IdleSweeper:
        """
        The one timer that evicts this server's silent clients.
        """
        if self._sweeper is None:
            self._sweeper = IdleSweeper(self._clock, self.sweepPeriod)
        return self._sweeper

    # Hooks

    def clientConnected(self, protocol: HeartbeatProtocol) -> None:
        """
        A client completed its handshake.
        """

    def clientDisconnected(self, protocol: HeartbeatProtocol, reason: DisconnectReason) -> None:
        """
        A client (handshake completed or not) went away, for C{reason}.
        """

    def messageReceived(self, protocol: HeartbeatProtocol, message: bytes) -> None:
        """
        A client sent a message (with the default L{ServerProtocol}).
        """

    # Connection lifecycle

    def buildProtocol(self, addr: Any) -> HeartbeatProtocol:
        p = self.protocol()
        p.factory = self
        full = self.maxConnections is not None and len(self.connections) >= self.maxConnections
        if self._shutdown is not None or full:
            self._refused.add(p)
        else:
            self.connections.add(p)
        return p

    def heartbeatConnectionMade(self, protocol: HeartbeatProtocol) -> None:
        if protocol in self._refused:
            retryAfter = self.fullRetryAfter * (1 + self.random())
            self.log.warn(
                "Refusing {peer}: {count} connections is the limit",
                peer=protocol.peer,
                count=self.maxConnections,
            )
            protocol.close(CloseCode.TOO_MANY_CONNECTIONS, "server full", retryAfter)

    def heartbeatConnectionReady(self, protocol: HeartbeatProtocol) -> None:
        assert protocol.core is not None and protocol.core.peerHello is not None
        clientId = protocol.core.peerHello.clientId
        if clientId is not None:
            previous = self.byClientId.get(clientId)
            self.byClientId[clientId] = protocol
            if previous is not None and previous is not protocol:
                previous.close(CloseCode.NORMAL, _REPLACED)
        self.clientConnected(protocol)

    def heartbeatPingReceived(self, protocol: HeartbeatProtocol, at: float) -> None:
        core = protocol.core
        if core is None or core.pingGap is None or core.interval is None:
            return
        gap, interval = core.pingGap, core.interval
        if gap >= self.pingTolerance * interval:
            return  # the common case: nothing stored per ping
        strikes = self._strikes[protocol] = self._strikes.get(protocol, 0) + 1
        if strikes > self.maxPingStrikes:
            protocol.close(CloseCode.TOO_MANY_PINGS, "pinging faster than the interval")
        else:
            self.log.warn(
                "{peer} pings too often ({gap:.3f}s apart, interval {interval}s): strike {strikes}",
                peer=protocol.peer,
                gap=gap,
                interval=interval,
                strikes=strikes,
            )

    # Sessions (protocol version 2, clients that ask for them)

    def heartbeatSessionFor(
        self, protocol: HeartbeatProtocol, hello: Hello
    ) -> tuple[Session, bool] | None:
        """
        The session for a client's HELLO: the one it names if we still keep
        it (taken over from an older connection that has not died yet),
        else a new one; L{None} if sessions are off (C{sessionGrace=None}).

        @raise RemoteProtocolError: the HELLO cannot resume the session it
            names; nothing was changed (the live owner keeps it).
        """
        if self.sessionGrace is None:
            return None
        requested = hello.session
        assert requested is not None and hello.received is not None
        session = self.sessions.get(requested)
        if session is not None:
            if hello.received > session.sent:
                raise RemoteProtocolError(
                    f"resume acknowledges message {hello.received}, "
                    f"but only {session.sent} were sent in that session"
                )
            call = self._graceCalls.pop(requested, None)
            if call is not None and call.active():
                call.cancel()
            old = self._sessionOwner.get(requested)
            if old is not None and old is not protocol and old.core is not None:
                old.core.session = None  # nothing more reaches the session through it
                old.abort(ClosedLocally(CloseCode.NORMAL, "session resumed on a new connection"))
            self._sessionOwner[requested] = protocol
            self.sessionsResumed += 1
            return session, True
        session = Session(
            requested,
            maxMessages=self.sessionBuffer,
            maxBytes=self.sessionBytes,
            overflow=self.sessionOverflow,
        )
        self.sessions[session.id] = session
        self._sessionOwner[session.id] = protocol
        return session, False

    def _keepSession(self, protocol: HeartbeatProtocol) -> None:
        session = protocol.core.session if protocol.core is not None else None
        if session is None or self._sessionOwner.get(session.id) is not protocol:
            return
        del self._sessionOwner[session.id]
        assert self.sessionGrace is not None
        self._graceCalls[session.id] = self._clock.callLater(
            self.sessionGrace, self._expireSession, session.id
        )

    def _expireSession(self, sessionId: bytes) -> None:
        self._graceCalls.pop(sessionId, None)
        session = self.sessions.pop(sessionId, None)
        if session is None:
            return
        self.sessionsExpired += 1
        self.log.warn(
            "Session {session} expired after {grace}s: {count} messages to it undelivered",
            session=sessionId.hex(),
            grace=self.sessionGrace,
            count=len(session),
        )
        self.sessionExpired(session)

    def sessionExpired(self, session: Session) -> None:
        """
        Override: a disconnected client did not come back within
        C{sessionGrace}; the C{len(session)} messages to it that it had not
        acknowledged are dropped.  Already logged.
        """

    def forgetSessions(self) -> None:
        """
        Drop every session kept for a disconnected client, now (no
        C{sessionExpired} calls): on shutdown, or to free memory.
        """
        for call in self._graceCalls.values():
            if call.active():
                call.cancel()
        for sessionId in self._graceCalls:
            self.sessions.pop(sessionId, None)
        self._graceCalls.clear()

    def heartbeatConnectionLost(self, protocol: HeartbeatProtocol, reason: Failure) -> None:
        self._strikes.pop(protocol, None)
        self._keepSession(protocol)
        if protocol in self._refused:
            self._refused.discard(protocol)
            why = DisconnectReason.LIMIT
        else:
            self.connections.discard(protocol)
            why = DisconnectReason.classify(reason)
        core = protocol.core
        clientId = core.peerHello.clientId if core and core.peerHello else None
        if clientId is not None and self.byClientId.get(clientId) is protocol:
            del self.byClientId[clientId]
        self.counts[why] += 1
        if why is DisconnectReason.EVICTED:
            self.evictions += 1
        self.clientDisconnected(protocol, why)
        if self._shutdown is not None and not self.connections and not self._refused:
            self._finishShutdown()

    # Registry

    def __iter__(self) -> Iterator[ConnectionInfo]:
        return (self.info(p) for p in list(self.connections) if p.isOpen)

    def info(self, protocol: HeartbeatProtocol) -> ConnectionInfo:
        stats = protocol.stats
        core = protocol.core
        assert core is not None
        return ConnectionInfo(
            peer=describePeer(protocol.transport),
            clientId=core.peerHello.clientId if core.peerHello else None,
            connectedSince=stats.connectedAt,
            lastReceived=stats.lastReceived,
            rtt=stats.srtt,
            framesIn=stats.framesIn,
            framesOut=stats.framesOut,
            bytesIn=stats.bytesIn,
            bytesOut=stats.bytesOut,
        )

    def get(self, clientId: str) -> HeartbeatProtocol | None:
        return self.byClientId.get(clientId)

    # Push

    def push(self, protocol: HeartbeatProtocol, message: bytes) -> bool:
        """
        Send to one connection, isolating the caller from it: never raises,
        never blocks.  A recipient whose session buffer is full (it does
        not acknowledge) is closed with SLOW_CONSUMER and counted; one the
        message is too large for is skipped and counted; one that stops
        reading is dropped once its unread output passes
        C{maxPendingOutput}.  Returns whether the message was sent.
        """
        if not protocol.isOpen:
            return False
        try:
            protocol.sendMessage(message)
        except QueueFull as e:
            self.slowConsumers += 1
            self.log.warn(
                "{peer} does not acknowledge ({error}); closing it", peer=protocol.peer, error=e
            )
            protocol.close(CloseCode.SLOW_CONSUMER, "not acknowledging")
            return False
        except LocalProtocolError as e:
            self.pushRefused += 1
            self.log.debug("Not sent to {peer}: {error}", peer=protocol.peer, error=e)
            return False
        return True

    def send(self, clientId: str, message: bytes) -> bool:
        """
        Send to one client by id; L{False} if no such client is connected or
        it could not take the message (see L{push}).  Never blocks.
        """
        protocol = self.byClientId.get(clientId)
        if protocol is None:
            return False
        return self.push(protocol, message)

    def broadcast(
        self, message: bytes, where: Callable[[HeartbeatProtocol], bool] | None = None
    ) -> int:
        """
        Send to every open connection (that C{where} accepts); returns how
        many took it.  Each recipient is handled alone (see L{push}): one
        that cannot take the message never affects the caller or the others.
        """
        sent = 0
        for protocol in list(self.connections):
            if not protocol.isOpen or (where is not None and not where(protocol)):
                continue
            if self.push(protocol, message):
                sent += 1
        return sent

    # Shutdown

    def shutdown(self, timeout: float = 5.0, spread: float = 10.0) -> Deferred[None]:
        """
        Tell every client we are going away, with a retry-after hint drawn
        uniformly from C{[0, spread]} so that the fleet does not come back in
        one burst; refuse new connections; wait up to C{timeout} for the
        clients to leave, then abort the rest.  The Deferred fires when all
        are gone.  Idempotent.
        """
        if self._shutdown is not None:
            return self._chain(self._shutdown)
        self._shutdown = Deferred()
        done = self._chain(self._shutdown)
        if not self.connections and not self._refused:
            self._finishShutdown()
            return done
        self.log.info("Shutting down: {count} clients told to go away", count=len(self.connections))
        for protocol in list(self.connections):
            protocol.close(CloseCode.GOING_AWAY, "server shutting down", self.random() * spread)
        self._shutdownCall = self._clock.callLater(timeout, self._abortRemaining)
        return done

    @staticmethod
    def _chain(d: Deferred[None]) -> Deferred[None]:
        """
        A new Deferred that fires when C{d} does, for each caller.
        """
        chained: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            chained.callback(None)
            return result

        d.addBoth(fire)
        return chained

    def _abortRemaining(self) -> None:
        self._shutdownCall = None
        remaining = list(self.connections) + list(self._refused)
        self.log.warn("Shutdown: aborting {count} clients that did not leave", count=len(remaining))
        for protocol in remaining:
            protocol.abort(ClosedLocally(CloseCode.GOING_AWAY, "shutdown timeout"))

    def _finishShutdown(self) -> None:
        self.forgetSessions()
        if self._shutdownCall is not None and self._shutdownCall.active():
            self._shutdownCall.cancel()
        self._shutdownCall = None
        if self._shutdown is not None and not self._shutdown.called:
            self._shutdown.callback(None)
