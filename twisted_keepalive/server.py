"""
L{KeepaliveServerFactory}: evicts silent clients, knows who is connected,
pushes to them, refuses abuse, and shuts down gracefully.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random as _random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .budget import MESSAGE_COST, MemoryBudget
from .config import HeartbeatConfig
from .errors import (
    CloseCode,
    ClosedLocally,
    HandshakeTimeout,
    HeartbeatTimeout,
    LocalProtocolError,
    PeerClosed,
    ProtocolViolation,
    Refused,
    RemoteProtocolError,
)
from .frames import Hello
from .heartbeat import HeartbeatProtocol, describePeer, maybeGlobalReactor
from .logflood import PeerLogLimiter
from .session import Overflow, QueueFull, Session
from .sweep import IdleSweeper

if TYPE_CHECKING:
    from .cluster_node import ClusterNode

#: Client ids remembered after they leave, to count them back (reconnects).
_DEPARTED = 10_000


class DisconnectReason(Enum):
    """
    Why a client left, as the disconnect hook and the metrics tell it.
    """

    EVICTED = "evicted"  # silent past the idle timeout
    HANDSHAKE_TIMEOUT = "handshake-timeout"
    CROWDED = "crowded-out"  # still handshaking when its slot was needed
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
_CROWDED = "handshake slot given to a newer connection"
_BY_CODE: dict[int, DisconnectReason] = {
    CloseCode.HANDSHAKE_TIMEOUT: DisconnectReason.CROWDED,
    CloseCode.TOO_MANY_CONNECTIONS: DisconnectReason.LIMIT,
    CloseCode.TOO_MANY_PINGS: DisconnectReason.TOO_MANY_PINGS,
    CloseCode.SLOW_CONSUMER: DisconnectReason.SLOW_CONSUMER,
    CloseCode.GOING_AWAY: DisconnectReason.SHUTDOWN,
}


def shortId(sessionId: bytes) -> str:
    """
    A session id as logs show it: its first 4 bytes.  The whole id is a
    bearer credential for its owner's resume; it is never logged.
    """
    return sessionId[:4].hex() + "..."


@dataclass(eq=False)
class _Kept:
    """
    A session the server keeps: for its live connection, or for its
    client's resume within the grace period.

    @ivar identity: digest of who may resume it (client id, token, TLS
        peer certificate).
    """

    session: Session
    identity: bytes
    owner: HeartbeatProtocol | None
    graceCall: IDelayedCall | None = field(default=None)


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
    @ivar maxConnections: clients (handshake completed) beyond this get
        CLOSE TOO_MANY_CONNECTIONS with a retry-after hint of
        C{fullRetryAfter} seconds spread by up to 100 %.
    @ivar maxHandshaking: connections still in their handshake have their
        own pool, so that sockets that never speak cannot keep clients out
        (slowloris): when it is full, a new connection takes the slot of
        the oldest one, which is dropped.  A real client sends its HELLO at
        once and needs its slot for one round trip.
    @ivar pingTolerance: a PING arriving sooner than C{pingTolerance x
        interval} (the negotiated interval) after the previous one is a
        strike and a PING on time takes one away (strikes decay, as gRPC's
        reset): after more than C{maxPingStrikes} the client is closed with
        TOO_MANY_PINGS.  Occasional bunched PINGs never close a client;
        one that pings too often always is.
    @ivar maxSessions: sessions kept at most (live or in their grace).
    @ivar memoryBudget: the L{MemoryBudget} shared by every session's
        retransmit buffer and every connection's unread output.  At its
        limit the server forgets sessions in their grace period, oldest
        first (each counted in C{sessionsEvicted} and reported to
        L{sessionExpired}), then refuses to store more for the client that
        holds the most (its push fails; it is closed as a slow consumer),
        and drops a connection that is not reading rather than buffer for
        it.  A new session at a limit is refused (CLOSE
        TOO_MANY_CONNECTIONS with a retry-after hint).
    @ivar peerLog: the L{PeerLogLimiter} for log lines peers cause.
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
        maxHandshaking: int = 256,
        maxSessions: int = 10_000,
        memoryBudget: int = 256 << 20,
        logPeriod: float = 10.0,
        clock: IReactorTime | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if maxConnections is not None and maxConnections < 0:
            raise ValueError(f"maxConnections must be >= 0, not {maxConnections!r}")
        if maxHandshaking < 1:
            raise ValueError(f"maxHandshaking must be >= 1, not {maxHandshaking!r}")
        if maxSessions < 1:
            raise ValueError(f"maxSessions must be >= 1, not {maxSessions!r}")
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
        self.maxHandshaking = maxHandshaking
        self.maxSessions = maxSessions
        self.memoryBudget = MemoryBudget(memoryBudget, self._makeRoom)
        self.peerLog: PeerLogLimiter | None = None  # made with the clock, on first use
        self.logPeriod = logPeriod
        # Connections in their handshake, oldest first (dicts keep order).
        self._handshaking: dict[HeartbeatProtocol, None] = {}
        self.crowdedOut = 0
        # Sessions kept, by a keyed digest of their id: a lookup's timing
        # tells nothing about ids (PYTHONHASHSEED or not); the id itself is
        # then compared in constant time.
        self._sessionKey = os.urandom(16)
        self._kept: dict[bytes, _Kept] = {}
        # Keys of the sessions in their grace period, oldest first.
        self._inGrace: dict[bytes, None] = {}
        self.sessionsExpired = 0
        self.sessionsResumed = 0
        #: Sessions forgotten before their grace ran out, at a limit.
        self.sessionsEvicted = 0
        #: Resumes refused: another client's session, or a bad acknowledgement.
        self.resumesRefused = 0
        #: New sessions refused at a limit (maxSessions, memoryBudget).
        self.sessionsRefused = 0
        #: Pushes (send, broadcast) a recipient could not take: closed as a
        #: slow consumer (its session buffer full) or skipped (too large).
        self.slowConsumers = 0
        self.pushRefused = 0
        self._sweeper: IdleSweeper | None = None
        #: Clients that came back (a client id seen leaving lately, or a
        #: session resumed).
        self.reconnects = 0
        self._departed: OrderedDict[str, None] = OrderedDict()
        #: Set by L{ClusterNode}: this server is one node of a cluster.
        self.cluster: ClusterNode | None = None

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

    @property
    def established(self) -> int:
        """Connections past their handshake (what C{maxConnections} bounds)."""
        return len(self.connections) - len(self._handshaking)

    def _full(self) -> bool:
        return self.maxConnections is not None and self.established >= self.maxConnections

    def buildProtocol(self, addr: Any) -> HeartbeatProtocol:
        if self.peerLog is None:
            self.peerLog = PeerLogLimiter(self._clock, self.logPeriod)
        p = self.protocol()
        p.factory = self
        if self._shutdown is not None or self._full():
            self._refused.add(p)
            return p
        self.connections.add(p)
        handshaking = self._handshaking
        handshaking[p] = None
        if len(handshaking) > self.maxHandshaking:
            # The oldest one has had the longest to speak: it gives way.
            oldest = next(iter(handshaking))
            del handshaking[oldest]
            self.crowdedOut += 1
            if oldest.transport is not None:
                oldest.abort(ClosedLocally(CloseCode.HANDSHAKE_TIMEOUT, _CROWDED))
        if self.cluster is not None:
            self.cluster.protocolBuilt(p)
        return p

    def _retryHint(self) -> float:
        return self.fullRetryAfter * (1 + self.random())

    def heartbeatConnectionMade(self, protocol: HeartbeatProtocol) -> None:
        if protocol in self._refused:
            why = "shutting down" if self._shutdown is not None else "server full"
            protocol.peerLog(
                "refused",
                "warn",
                "Refusing {peer}: {why} ({count} clients)",
                why=why,
                count=self.established,
            )
            code = (
                CloseCode.GOING_AWAY
                if self._shutdown is not None
                else (CloseCode.TOO_MANY_CONNECTIONS)
            )
            protocol.close(code, why, self._retryHint())

    def heartbeatConnectionReady(self, protocol: HeartbeatProtocol) -> None:
        assert protocol.core is not None and protocol.core.peerHello is not None
        self._handshaking.pop(protocol, None)
        if self.maxConnections is not None and self.established > self.maxConnections:
            # Admitted while handshaking; the clients that finished first
            # took the places.
            protocol.close(CloseCode.TOO_MANY_CONNECTIONS, "server full", self._retryHint())
            return
        clientId = protocol.core.peerHello.clientId
        if clientId is not None:
            if self._departed.pop(clientId, 0) is None:
                self.reconnects += 1
            previous = self.byClientId.get(clientId)
            self.byClientId[clientId] = protocol
            if previous is not None and previous is not protocol:
                previous.close(CloseCode.NORMAL, _REPLACED)
        if self.cluster is not None:
            self.cluster.clientReady(protocol)
        self.clientConnected(protocol)

    def heartbeatPingReceived(
        self, protocol: HeartbeatProtocol, at: float, gap: float | None = None
    ) -> None:
        core = protocol.core
        if gap is None or core is None or core.interval is None:
            return
        interval = core.interval
        strikes = self._strikes
        if gap >= self.pingTolerance * interval:
            # The common case: nothing stored per ping.  A ping on time
            # takes a strike away (gRPC resets them as data flows).
            if strikes and protocol in strikes:
                if strikes[protocol] <= 1:
                    del strikes[protocol]
                else:
                    strikes[protocol] -= 1
            return
        count = strikes[protocol] = strikes.get(protocol, 0) + 1
        if count > self.maxPingStrikes:
            protocol.peerLog(
                "too-many-pings",
                "warn",
                "{peer} pings too often ({gap:.3f}s apart, interval {interval}s); closing",
                gap=gap,
                interval=interval,
            )
            protocol.close(CloseCode.TOO_MANY_PINGS, "pinging faster than the interval")

    # Sessions (protocol version 2, clients that ask for them)

    @property
    def sessions(self) -> dict[bytes, Session]:
        """
        The sessions kept (attached to a connection, or within their grace
        period), by id: a snapshot.
        """
        return {kept.session.id: kept.session for kept in self._kept.values()}

    def sessionOwner(self, sessionId: bytes) -> HeartbeatProtocol | None:
        """The live connection a kept session is attached to, if any."""
        kept = self._findKept(sessionId)
        return None if kept is None else kept.owner

    def _keyOf(self, sessionId: bytes) -> bytes:
        return hashlib.blake2b(sessionId, key=self._sessionKey, digest_size=16).digest()

    def _findKept(self, sessionId: bytes) -> _Kept | None:
        kept = self._kept.get(self._keyOf(sessionId))
        if kept is None or not hmac.compare_digest(kept.session.id, sessionId):
            return None
        return kept

    def identityOf(self, protocol: HeartbeatProtocol, hello: Hello) -> bytes:
        """
        Who a client is, for its sessions: its client id, its token, and its
        TLS certificate when it shows one.  Only the same identity resumes a
        session.  Override to bind sessions to something else (an account
        your token check found).
        """
        digest = hashlib.blake2b(digest_size=32)
        for part in (
            (hello.clientId or "").encode("utf-8"),
            hello.token or b"",
            _peerCertificate(protocol),
        ):
            digest.update(len(part).to_bytes(4, "big") + part)
        return digest.digest()

    def heartbeatSessionFor(
        self, protocol: HeartbeatProtocol, hello: Hello
    ) -> tuple[Session, bool] | None:
        """
        The session for a client's HELLO: the one it names if we still keep
        it and the client is its owner (taken over from an older connection
        that has not died yet), else a new one; L{None} if sessions are off
        (C{sessionGrace=None}).

        @raise RemoteProtocolError: the HELLO cannot resume the session it
            names (another client's, or an acknowledgement of messages
            never sent); nothing was changed (the live owner keeps it).
        @raise Refused: a new session at C{maxSessions} or the memory
            budget, with no session in its grace period to forget.
        """
        if self.sessionGrace is None:
            return None
        requested = hello.session
        assert requested is not None and hello.received is not None
        identity = self.identityOf(protocol, hello)
        key = self._keyOf(requested)
        kept = self._kept.get(key)
        if kept is not None and hmac.compare_digest(kept.session.id, requested):
            session = kept.session
            if not hmac.compare_digest(kept.identity, identity):
                self.resumesRefused += 1
                raise RemoteProtocolError(
                    f"session {shortId(requested)} belongs to another client",
                    CloseCode.AUTH_FAILED,
                )
            if hello.received > session.sent:
                self.resumesRefused += 1
                raise RemoteProtocolError(
                    f"resume acknowledges message {hello.received}, "
                    f"but only {session.sent} were sent in that session"
                )
            self._inGrace.pop(key, None)
            if kept.graceCall is not None and kept.graceCall.active():
                kept.graceCall.cancel()
            kept.graceCall = None
            old = kept.owner
            if old is not None and old is not protocol and old.core is not None:
                old.core.session = None  # nothing more reaches the session through it
                old.abort(ClosedLocally(CloseCode.NORMAL, "session resumed on a new connection"))
            kept.owner = protocol
            self.sessionsResumed += 1
            if hello.clientId is None:
                self.reconnects += 1
            if self.cluster is not None:
                self.cluster.sessionAttached(protocol, session, kept.identity, True)
            return session, True
        # A new session, under the id the client chose.
        budget = self.memoryBudget
        while len(self._kept) >= self.maxSessions or budget.used >= budget.limit:
            if not self._evictOldest():
                self.sessionsRefused += 1
                raise Refused(
                    f"no room for another session ({len(self._kept)} kept, "
                    f"{budget.used} of {budget.limit} bytes held)",
                    self._retryHint(),
                )
        session = self.newSession(requested)
        self._kept[key] = _Kept(session, identity, protocol)
        if self.cluster is not None:
            self.cluster.sessionAttached(protocol, session, identity, False)
        return session, False

    def newSession(self, sessionId: bytes) -> Session:
        """A session with this server's bounds, charged to its budget."""
        session = Session(
            sessionId,
            maxMessages=self.sessionBuffer,
            maxBytes=self.sessionBytes,
            overflow=self.sessionOverflow,
        )
        session.budget = self.memoryBudget
        return session

    def adoptSession(self, session: Session, identity: bytes) -> None:
        """
        Keep a session another server saved (a cluster node's, fetched for
        a resume), in its grace period until its client's handshake takes
        it; it replaces our own copy of it, if any.
        """
        key = self._keyOf(session.id)
        old = self._kept.pop(key, None)
        if old is not None:
            self._inGrace.pop(key, None)
            if old.graceCall is not None and old.graceCall.active():
                old.graceCall.cancel()
            old.session.releaseBudget()
            if old.owner is not None and old.owner.core is not None:
                old.owner.core.session = None
                old.owner.abort(ClosedLocally(CloseCode.NORMAL, "session taken over"))
        kept = _Kept(session, identity, None)
        self._kept[key] = kept
        self._inGrace[key] = None
        kept.graceCall = self._clock.callLater(self.sessionGrace or 0, self._forget, key)

    def dropMovedSession(self, sessionId: bytes) -> bool:
        """
        A cluster node resumed this session: forget our copy (no
        C{sessionExpired}, nothing counted lost), and close a connection of
        ours still attached to it.  L{False} if we did not keep it.
        """
        kept = self._findKept(sessionId)
        if kept is None:
            return False
        key = self._keyOf(sessionId)
        self._inGrace.pop(key, None)
        del self._kept[key]
        if kept.graceCall is not None and kept.graceCall.active():
            kept.graceCall.cancel()
        kept.session.releaseBudget()
        owner = kept.owner
        if owner is not None and owner.core is not None:
            owner.core.session = None
            owner.abort(ClosedLocally(CloseCode.NORMAL, "session resumed on another node"))
        return True

    def _makeRoom(self, holder: Any, size: int) -> bool:
        """
        The memory budget is spent: forget sessions in their grace period,
        oldest first, until C{size} fits.  If it still does not, let a
        client holding less than an even share through (a healthy client
        acknowledges and holds next to nothing: it must not pay for the
        ones that do not), and refuse the others.
        """
        budget = self.memoryBudget
        while budget.used + size > budget.limit:
            if not self._evictOldest():
                break
        else:
            return True
        if isinstance(holder, Session):
            held = holder.unackedBytes + len(holder) * MESSAGE_COST
            holders = max(1, len(self._kept))
        else:
            held = getattr(holder, "_charged", 0)
            holders = max(1, len(self.connections))
        return held + size <= budget.limit // holders

    def _evictOldest(self) -> bool:
        """
        Forget the session longest in its grace period; L{False} if none is.
        """
        if not self._inGrace:
            return False
        key = next(iter(self._inGrace))
        self._forget(key, evicted=True)
        return True

    def _keepSession(self, protocol: HeartbeatProtocol) -> None:
        session = protocol.core.session if protocol.core is not None else None
        if session is None:
            return
        key = self._keyOf(session.id)
        kept = self._kept.get(key)
        if kept is None or kept.owner is not protocol:
            return
        kept.owner = None
        assert self.sessionGrace is not None
        self._inGrace[key] = None
        kept.graceCall = self._clock.callLater(self.sessionGrace, self._forget, key)

    def _forget(self, key: bytes, evicted: bool = False) -> None:
        """
        A session in its grace period ends: it expired, or a limit needed
        its memory.  Its undelivered messages are reported.
        """
        self._inGrace.pop(key, None)
        kept = self._kept.pop(key, None)
        if kept is None:
            return
        if kept.graceCall is not None and kept.graceCall.active():
            kept.graceCall.cancel()
        session = kept.session
        session.releaseBudget()
        if evicted:
            self.sessionsEvicted += 1
            what = "forgotten early (a server limit)"
        else:
            self.sessionsExpired += 1
            what = f"expired after {self.sessionGrace}s"
        if self.cluster is not None:
            self.cluster.sessionForgotten(session)
        limiter = self.peerLog
        suppressed = None if limiter is None else limiter.allow("session-end", "*")
        if limiter is None or suppressed is not None:
            self.log.warn(
                "Session {session} {what}: {count} messages to it undelivered{more}",
                session=shortId(session.id),
                what=what,
                count=len(session),
                more=f" ({suppressed} more sessions ended, not logged)" if suppressed else "",
            )
        self.sessionExpired(session)

    def sessionExpired(self, session: Session) -> None:
        """
        Override: a disconnected client did not come back within
        C{sessionGrace}, or a limit forgot its session sooner
        (C{memoryBudget}, C{maxSessions}); the C{len(session)} messages to
        it that it had not acknowledged are dropped.  Already logged.
        """

    def forgetSessions(self) -> None:
        """
        Drop every session kept for a disconnected client, now (no
        C{sessionExpired} calls): on shutdown, or to free memory.
        """
        dropped = []
        for key in list(self._inGrace):
            kept = self._kept.pop(key, None)
            if kept is not None:
                if kept.graceCall is not None and kept.graceCall.active():
                    kept.graceCall.cancel()
                kept.session.releaseBudget()
                dropped.append(kept.session)
        self._inGrace.clear()
        if self.cluster is not None:
            self.cluster.sessionsDropped(dropped)

    def heartbeatConnectionLost(self, protocol: HeartbeatProtocol, reason: Failure) -> None:
        self._strikes.pop(protocol, None)
        self._handshaking.pop(protocol, None)
        self._keepSession(protocol)
        if protocol in self._refused:
            self._refused.discard(protocol)
            why = DisconnectReason.LIMIT
        else:
            self.connections.discard(protocol)
            why = DisconnectReason.classify(reason)
        core = protocol.core
        clientId = core.peerHello.clientId if core and core.peerHello else None
        wasCurrent = clientId is not None and self.byClientId.get(clientId) is protocol
        if wasCurrent:
            assert clientId is not None
            del self.byClientId[clientId]
            departed = self._departed
            departed[clientId] = None
            if len(departed) > _DEPARTED:
                departed.popitem(last=False)
        if self.cluster is not None:
            self.cluster.clientLost(protocol, clientId, wasCurrent)
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
            protocol.peerLog(
                "slow-consumer",
                "warn",
                "{peer} does not acknowledge ({error}); closing it",
                error=e,
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


def _peerCertificate(protocol: HeartbeatProtocol) -> bytes:
    """
    The SHA-256 of the peer's TLS certificate (DER), or empty without one.
    """
    getCertificate = getattr(protocol.transport, "getPeerCertificate", None)
    if getCertificate is None:
        return b""
    try:
        certificate = getCertificate()
    except Exception:
        return b""
    if certificate is None:
        return b""
    try:
        from OpenSSL.crypto import FILETYPE_ASN1, dump_certificate

        return hashlib.sha256(dump_certificate(FILETYPE_ASN1, certificate)).digest()
    except Exception:
        return hashlib.sha256(repr(certificate).encode()).digest()
