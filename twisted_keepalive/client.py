"""
L{KeepaliveClientFactory}: a drop-in L{ReconnectingClientFactory} that
heartbeats, backs off with jitter, resets only after a connection proved
stable, times out connects, fails over across servers, and queues messages
while disconnected.
"""

from __future__ import annotations

import contextlib
import os
import random as _random
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from twisted.internet import error
from twisted.internet.abstract import isIPAddress as isIPv4Address
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
)
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IDelayedCall,
    IProducer,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .adaptive import AdaptiveInterval
from .backoff import RetryPolicy, jitteredBackoff
from .config import HeartbeatConfig
from .errors import (
    CloseCode,
    DeliveryCancelled,
    HeartbeatTimeout,
    KeepaliveError,
    LocalProtocolError,
    MessageDropped,
    PeerClosed,
)
from .frames import SESSION_ID_BYTES
from .heartbeat import HeartbeatProtocol, fireReceipts, maybeGlobalReactor
from .session import Overflow, QueueFull, Session


class ClientState(Enum):
    IDLE = "idle"  # not started
    CONNECTING = "connecting"
    CONNECTED = "connected"  # handshake complete
    WAITING = "waiting"  # a retry is scheduled
    STOPPED = "stopped"


class ConnectTimeout(error.TimeoutError):
    """
    A connection attempt took longer than the connect timeout.
    """

    def __init__(self, message: str) -> None:
        super().__init__(string=message)  # type: ignore[no-untyped-call]

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "connect timeout"


class GaveUp(KeepaliveError):
    """
    The factory stopped retrying after C{maxRetries} consecutive failures.
    """


class ServerList:
    """
    Servers to connect to, each an endpoint with a label for status and logs.

    Entries may be C{"host:port"}, C{"[v6addr]:port"}, an endpoint string
    (C{"tcp:..."}, C{"tls:..."}, C{"unix:..."}), a C{(host, port)} pair, or
    an L{IStreamClientEndpoint}.
    """

    PREFIXES = ("tcp:", "tcp6:", "tls:", "ssl:", "unix:", "tor:")

    def __init__(self, reactor: Any, servers: Sequence[Any], connectTimeout: float) -> None:
        if not servers:
            raise ValueError("at least one server is needed")
        self.entries: list[tuple[str, IStreamClientEndpoint]] = [
            self._parse(reactor, s, connectTimeout) for s in servers
        ]

    @classmethod
    def _parse(
        cls, reactor: Any, server: Any, connectTimeout: float
    ) -> tuple[str, IStreamClientEndpoint]:
        if IStreamClientEndpoint.providedBy(server):
            return repr(server), server
        if isinstance(server, tuple):
            host, port = server
            return cls._hostPort(reactor, str(host), int(port), connectTimeout)
        if not isinstance(server, str):
            raise ValueError(f"cannot use {server!r} as a server")
        if server.startswith(cls.PREFIXES):
            return server, clientFromString(reactor, server)
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"server {server!r} is not HOST:PORT or an endpoint string")
        return cls._hostPort(reactor, host.strip("[]"), int(port), connectTimeout)

    @staticmethod
    def _hostPort(
        reactor: Any, host: str, port: int, connectTimeout: float
    ) -> tuple[str, IStreamClientEndpoint]:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # An address needs no resolution: HostnameEndpoint would still hand
        # each attempt to getaddrinfo in the thread pool (10 threads), which
        # queues attempts in a reconnect storm (bench/storm.py).
        endpoint: IStreamClientEndpoint
        if isIPv4Address(host):
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=connectTimeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=connectTimeout)
        else:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=connectTimeout)
        return label, endpoint

    def __len__(self) -> int:
        return len(self.entries)


StateObserver = Callable[[ClientState, ClientState], None]


@implementer(IPushProducer)
class _LinkRelay:
    """
    Registered with each connection in turn: tells the factory when the
    link is blocked (the transport's buffer is full, or the session's
    retransmit buffer is) and when it has drained.
    """

    def __init__(self, factory: KeepaliveClientFactory) -> None:
        self.factory = factory
        self.blocked = False

    def pauseProducing(self) -> None:
        self.blocked = True
        self.factory._updateProducer()

    def resumeProducing(self) -> None:
        self.blocked = False
        self.factory._updateProducer()

    def stopProducing(self) -> None:
        self.blocked = False  # that connection is gone, not the application's stream


@implementer(IConsumer)
class KeepaliveClientFactory(ReconnectingClientFactory):
    """
    Use it as the stock class, C{reactor.connectTCP(host, port, factory)},
    or give it C{servers} and call L{connect} for endpoints and failover.

    Reconnection rules:
     - a pass tries the servers in turn, from the first (C{failover="order"})
       or from the one after the last used (C{"round-robin"}); after a
       failed attempt the next server is tried at once;
     - when a pass has failed, or a connection is lost, the factory waits
       C{retryPolicy(n)}, with C{n} the count of consecutive failures from
       1 (so the first retry waits the initial delay, jittered: a fleet
       that loses its server does not stampede the next one), then starts
       a new pass;
     - C{n} goes back to 0 only when a connection has completed the
       handshake and stayed up for C{stableAfter} seconds, so a server that
       accepts and drops at once, or a peer lost to a heartbeat timeout,
       meets a growing delay and never a tight loop;
     - a server's CLOSE with a retry-after hint is honoured: no reconnect
       before the hint; a hint of 0 means "go elsewhere now", obeyed once
       in a row (until a connection proves stable) and counted as a
       failure, so servers that all say it cannot make the client spin;
     - after C{maxRetries} consecutive failed passes the factory stops, says
       so in the log, and fails L{whenConnected} waiters with L{GaveUp}.

    Flow control: the factory is an C{IConsumer} that outlives its
    connections.  A producer registered once with L{registerProducer} is
    paused while the send queue (disconnected) or the retransmit buffer
    (C{resume}) is full, or while the live connection's transport is, and
    resumed once they are at most half full: a pipe never has to drop.
    L{pauseReading} is the other direction.

    @ivar state: the current L{ClientState}.
    @ivar attempts: connection attempts made.
    @ivar reconnects: successful handshakes after the first.
    @ivar heartbeatTimeouts: connections lost because the server went silent.
    @ivar failures: consecutive failed passes (the backoff's C{n} + 1).
    @ivar currentServer: label of the server connected to or last tried.
    @ivar connected: the L{HeartbeatProtocol} of the live connection, or None.
    @ivar dropped: messages dropped by the overflow policy.
    @ivar refused: messages taken out unsent because they exceeded the
        server's frame limit (learned at the handshake).
    @ivar lastDelay: the last backoff delay chosen, in seconds.
    @ivar lastError: why the last attempt failed or connection ended.
    """

    protocol = HeartbeatProtocol
    noisy = False
    log = Logger()

    # The stock attributes, with saner defaults (stock: 3600 s and e).  Read
    # at every retry, so a subclass or a later assignment takes effect at
    # once (twisted#5103).  Ignored when a retryPolicy is given.
    initialDelay = 1.0
    maxDelay = 60.0  # type: ignore[assignment]
    factor = 2.0
    jitter = "full"  # type: ignore[assignment]

    def __init__(
        self,
        heartbeatConfig: HeartbeatConfig | None = None,
        *,
        retryPolicy: RetryPolicy | None = None,  # default: see delayFor
        servers: Sequence[Any] = (),
        failover: str = "order",
        stableAfter: float = 10.0,
        connectTimeout: float = 10.0,
        maxRetries: int | None = None,
        queueSize: int = 1000,
        overflow: Overflow = Overflow.RAISE,
        resume: bool = False,
        resumeBytes: int = 16 << 20,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if failover not in ("order", "round-robin"):
            raise ValueError(f"failover must be 'order' or 'round-robin', not {failover!r}")
        if not connectTimeout > 0:
            raise ValueError(f"connect timeout must be positive, not {connectTimeout!r}")
        if not stableAfter >= 0:
            raise ValueError(f"stableAfter must be >= 0, not {stableAfter!r}")
        if maxRetries is not None and maxRetries < 0:
            raise ValueError(f"maxRetries must be >= 0, not {maxRetries!r}")
        if queueSize < 0:
            raise ValueError(f"queue size must be >= 0, not {queueSize!r}")
        self.heartbeatConfig = heartbeatConfig or HeartbeatConfig()
        config = self.heartbeatConfig
        #: Learns the path's idle limit across connections (adaptiveInterval).
        self.adaptive: AdaptiveInterval | None = None
        if config.adaptiveInterval is not None:
            self.adaptive = AdaptiveInterval(config.interval, config.adaptiveInterval)
        self.retryPolicy = retryPolicy
        self.random = random
        self._derived: tuple[tuple[Any, ...], RetryPolicy] | None = None
        self.failover = failover
        self.stableAfter = stableAfter
        self.connectTimeout = connectTimeout
        self.maxRetries = maxRetries  # type: ignore[assignment]
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor  # type: ignore[assignment]
        self.servers = ServerList(self._reactor, servers, connectTimeout) if servers else None
        self.queue: deque[bytes] = deque()
        # Receipts of the queued messages, index for index (None: no receipt).
        self._queueReceipts: deque[Deferred[int | None] | None] = deque()
        self.queueSize = queueSize
        self.overflow = overflow
        # With resume, the session's retransmit buffer is the queue: bounded
        # by queueSize messages and resumeBytes, with the same overflow policy.
        self.resumeSession: Session | None = (
            Session(
                os.urandom(SESSION_ID_BYTES),
                maxMessages=max(queueSize, 1),
                maxBytes=resumeBytes,
                overflow=overflow,
            )
            if resume
            else None
        )
        self.sessionsLost = 0
        self.undelivered = 0
        self.refused = 0
        self._producer: IPushProducer | None = None
        self._producerPaused = False
        self._relay = _LinkRelay(self)
        self._readingPaused = False
        self.state = ClientState.IDLE
        self.attempts = 0
        self.reconnects = 0
        self.heartbeatTimeouts = 0
        self.failures = 0
        self._queueDropped = 0
        self.currentServer: str | None = None
        self.connected: HeartbeatProtocol | None = None
        self.connectedSince: float | None = None
        self.lastDelay: float | None = None
        self.lastError: str | None = None
        self._handshakes = 0
        self._observers: list[StateObserver] = []
        self._waiters: list[tuple[Deferred[HeartbeatProtocol], int | None]] = []
        self._retryCall: IDelayedCall | None = None
        self._stableCall: IDelayedCall | None = None
        self._connectTimer: IDelayedCall | None = None
        self._attempt: Deferred[Any] | None = None
        self._pass: list[int] = []
        self._lastIndex = -1
        self._retryAfter: float | None = None
        # A retry-after of 0 ("go elsewhere now") was obeyed since the last
        # stable connection: the next one meets the backoff.
        self._jumped = False
        self._pending: Any = None

    # Plumbing

    def delayFor(self, attempt: int) -> float:
        """
        The backoff after C{attempt} consecutive failures (from 1):
        C{retryPolicy}, or a
        policy built from C{initialDelay}, C{maxDelay}, C{factor} and
        C{jitter} as they are now.
        """
        if self.retryPolicy is not None:
            return self.retryPolicy(attempt)
        key = (self.initialDelay, self.maxDelay, self.factor, self.jitter)
        if self._derived is None or self._derived[0] != key:
            policy = jitteredBackoff(
                "exponential",
                initialDelay=self.initialDelay,
                maxDelay=self.maxDelay,
                factor=self.factor,
                jitter=str(self.jitter),
                random=self.random,
            )
            self._derived = (key, policy)
        return self._derived[1](attempt)

    @property
    def _reactor(self) -> Any:
        return maybeGlobalReactor(self.reactor)

    @property
    def _clock(self) -> IReactorTime:
        return maybeGlobalReactor(self.clock)

    def _setState(self, new: ClientState) -> None:
        old, self.state = self.state, new
        if old is not new:
            for observer in list(self._observers):
                observer(old, new)

    def addStateObserver(self, observer: StateObserver) -> None:
        """
        Call C{observer(old, new)} on every state change.
        """
        self._observers.append(observer)

    def removeStateObserver(self, observer: StateObserver) -> None:
        self._observers.remove(observer)

    # Endpoint mode

    def connect(self) -> None:
        """
        Start connecting to C{servers} (endpoint mode).
        """
        if self.servers is None:
            raise LocalProtocolError("no servers given: use reactor.connectTCP, or pass servers=")
        self.continueTrying = True
        self.doStart()  # type: ignore[no-untyped-call]
        self._startPass()

    def _startPass(self) -> None:
        assert self.servers is not None
        count = len(self.servers)
        first = 0 if self.failover == "order" else (self._lastIndex + 1) % count
        self._pass = [(first + i) % count for i in range(count)]
        self._connectNext()

    def _connectNext(self) -> None:
        assert self.servers is not None
        index = self._pass.pop(0)
        self._lastIndex = index
        label, endpoint = self.servers.entries[index]
        self.currentServer = label
        self.attempts += 1
        self._setState(ClientState.CONNECTING)
        if not self.continueTrying:
            return  # an observer stopped us
        self._connectTimer = self._clock.callLater(self.connectTimeout, self._attemptTimedOut)
        attempt = endpoint.connect(self)
        if self._connectTimer is not None:
            self._attempt = attempt

        def finished(result: object) -> None:
            if self._attempt is attempt:
                self._attempt = None
            if isinstance(result, Failure):
                if result.check(CancelledError, error.ConnectingCancelledError):
                    if not self.continueTrying:
                        return  # stopTrying cancelled it
                    result = Failure(
                        ConnectTimeout(f"no connection within {self.connectTimeout:g}s")
                    )
                self._connectionFailed(result)

        attempt.addBoth(finished)

    # Connector mode (the stock ReconnectingClientFactory interface)

    def startedConnecting(self, connector: IConnector) -> None:
        self.attempts += 1
        self.connector = connector
        destination = connector.getDestination()
        host, port = getattr(destination, "host", None), getattr(destination, "port", None)
        self.currentServer = f"{host}:{port}" if host is not None else str(destination)
        self._setState(ClientState.CONNECTING)
        self._cancel("_connectTimer")
        self._connectTimer = self._clock.callLater(self.connectTimeout, self._attemptTimedOut)

    def _attemptTimedOut(self) -> None:
        """
        The attempt did not produce a usable connection (TCP connected and
        HELLOs exchanged) within the connect timeout.  A frozen server's
        kernel still accepts connections, so the handshake counts too.
        """
        self._connectTimer = None
        timeout = ConnectTimeout(f"no connection within {self.connectTimeout:g}s")
        pending = self._pending
        if pending is not None and pending.transport is not None:
            pending.abort(timeout)
        elif self._attempt is not None:
            self._attempt.cancel()
        elif self.connector is not None:
            transport = getattr(self.connector, "transport", None)
            failIfNotConnected = getattr(transport, "failIfNotConnected", None)
            if failIfNotConnected is not None:
                failIfNotConnected(timeout)
            else:
                self.connector.stopConnecting()

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.connector = connector
        self._connectionFailed(reason)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        # heartbeatConnectionLost already did the bookkeeping; only retry.
        self.connector = connector
        self._scheduleRetry()

    def retry(self, connector: IConnector | None = None) -> None:
        """
        Reconnect now (the stock API; the factory's own retries use the
        policy and call this when the delay is over).
        """
        self._retryCall = None
        if not self.continueTrying:
            return
        if self.servers is not None:
            self._startPass()
            return
        connector = connector or self.connector
        if connector is None:
            raise ValueError("no connector to retry")
        connector.connect()

    # Protocol events

    def buildProtocol(self, addr: Any) -> HeartbeatProtocol:
        p = self.protocol()
        p.factory = self
        self._pending = p  # connected, not yet usable: the connect timer still runs
        return p

    def heartbeatConnectionReady(self, protocol: HeartbeatProtocol) -> None:
        self._cancel("_connectTimer")
        self._pending = None
        self.connected = protocol
        self.connectedSince = self._clock.seconds()
        self._handshakes += 1
        if self._handshakes > 1:
            self.reconnects += 1
        self._stableCall = self._clock.callLater(self.stableAfter, self._stable)
        if self._drivesConnections:
            self.log.info(
                "Connected to {server} (attempt {attempts})",
                server=self.currentServer,
                attempts=self.attempts,
            )
        else:
            # Someone else connects (ClientService, endpoint.connect(factory)).
            self.currentServer = protocol.peer
            self.log.info("Connected to {server}", server=self.currentServer)
        while self.queue and protocol.isOpen:
            message, receipt = self.queue.popleft(), self._queueReceipts.popleft()
            self._sendOn(protocol, message, receipt)
        if self.resumeSession is not None and self.resumeSession.settled:
            fireReceipts(self.resumeSession)
        self._relay.blocked = False
        if protocol.isOpen and isinstance(protocol, HeartbeatProtocol):
            protocol._attachProducer(self._relay, elastic=False)
            if self._readingPaused:
                protocol.pauseReading()
        self._updateProducer()
        self._setState(ClientState.CONNECTED)
        for d, _ in self._popWaiters(lambda limit: True):
            d.callback(protocol)

    def _stable(self) -> None:
        self._stableCall = None
        self.failures = 0
        self._jumped = False
        self.resetDelay()  # type: ignore[no-untyped-call]

    def heartbeatConnectionLost(self, protocol: HeartbeatProtocol, reason: Failure) -> None:
        hint = reason.value.retryAfter if isinstance(reason.value, PeerClosed) else None
        if protocol is self._pending:
            # It never became usable (refused at HELLO, handshake timeout):
            # a failed attempt, so the pass goes on to the next server.
            self._pending = None
            self._connectionFailed(reason, hint, schedule=self.servers is not None)
            return
        self.connected = None
        self.connectedSince = None
        self._relay.blocked = False
        self._updateProducer()
        self._cancel("_stableCall")
        if reason.check(HeartbeatTimeout):
            self.heartbeatTimeouts += 1
        self._retryAfter = hint
        self.lastError = f"{type(reason.value).__name__}: {reason.value}"
        self.log.info(
            "Lost connection to {server}: {reason}", server=self.currentServer, reason=reason.value
        )
        if not self._drivesConnections:
            # ClientService (or the application) reconnects, not us: say
            # so in the state instead of claiming a connection.
            self._setState(ClientState.IDLE)
            return
        self._pass = []
        if hint == 0 and self.servers is not None and not self._jumped:
            # "Go elsewhere now": the other servers, at once; but only once
            # in a row (servers that all say so must not make us spin), and
            # it counts as a failure.
            self._jumped = True
            self.failures += 1
            count = len(self.servers)
            self._pass = [(self._lastIndex + i) % count for i in range(1, count)]
        if self.servers is not None:
            self._scheduleRetry()

    @property
    def _drivesConnections(self) -> bool:
        """Whether this factory makes its own attempts (servers, or a connector)."""
        return self.servers is not None or self.connector is not None

    def _connectionFailed(
        self, reason: Failure, hint: float | None = None, schedule: bool = True
    ) -> None:
        self._cancel("_connectTimer")
        self.lastError = reason.getErrorMessage()
        self.log.info(
            "Cannot connect to {server}: {reason}",
            server=self.currentServer,
            reason=reason.getErrorMessage(),
        )
        self._retryAfter = hint
        if schedule:
            self._scheduleRetry()

    def _scheduleRetry(self) -> None:
        # User code (state observers, whenConnected callbacks) runs last,
        # once this transition is complete: it may call stopTrying().
        if not self.continueTrying:
            self._setState(ClientState.STOPPED)
            return
        hint, self._retryAfter = self._retryAfter, None
        if self.servers is not None and self._pass:
            # More servers to try in this pass: go on at once (the recursion
            # is bounded by the length of the list).
            self._connectNext()
            return
        self.failures += 1
        self.retries = self.failures
        failures = self.failures
        expired = self._popWaiters(lambda limit: limit is not None and failures >= limit)
        if self.maxRetries is not None and failures > self.maxRetries:
            message = f"gave up after {failures} consecutive failures"
            self.log.warn(
                "Giving up on {server}: {message} (last: {error})",
                server=self.currentServer,
                message=message,
                error=self.lastError,
            )
            expired += self._popWaiters(lambda limit: True)
            self.stopTrying()
            for d, _ in expired:
                d.errback(Failure(GaveUp(message)))
            return
        delay = self.delayFor(failures)
        if hint == 0:
            if not self._jumped:  # "now", once in a row
                self._jumped = True
                delay = 0.0
        elif hint is not None:
            delay = hint if failures <= 1 else max(hint, delay)
        self.lastDelay = delay
        self.log.info("Reconnecting in {delay:.2f}s", delay=delay)
        self._retryCall = self._clock.callLater(delay, self.retry)
        self._setState(ClientState.WAITING)
        for d, _ in expired:
            d.errback(Failure(GaveUp(f"{failures} consecutive failures")))

    # Application API

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[HeartbeatProtocol]:
        """
        A Deferred that fires with the protocol once a connection has
        completed its handshake (at once if one is up).  With
        C{failAfterFailures}, it fails with L{GaveUp} once that many
        consecutive failed passes have happened; it fails with
        L{CancelledError} if the factory is stopped first.
        """
        if (
            self.state is ClientState.CONNECTED
            and self.connected is not None
            and self.connected.isOpen  # not one closing (a CLOSE received, not yet lost)
        ):
            return succeed(self.connected)
        if self.state is ClientState.STOPPED:
            return fail(CancelledError("the factory is stopped"))
        d: Deferred[HeartbeatProtocol] = Deferred()
        limit = None if failAfterFailures is None else self.failures + failAfterFailures
        self._waiters.append((d, limit))
        return d

    def _popWaiters(
        self, which: Callable[[int | None], bool]
    ) -> list[tuple[Deferred[HeartbeatProtocol], int | None]]:
        chosen = [w for w in self._waiters if which(w[1])]
        self._waiters = [w for w in self._waiters if not which(w[1])]
        return chosen

    @property
    def dropped(self) -> int:
        """
        Messages the overflow policy dropped: from the send queue, or with
        C{resume} from the retransmit buffer (connected or not).
        """
        session = self.resumeSession
        return self._queueDropped + (session.dropped if session is not None else 0)

    def sendMessage(self, message: bytes) -> None:
        """
        Send now if connected, else queue until the next handshake.

        Without C{resume}, delivery is at most once: a message written to a
        connection that then dies may be lost with it.  With C{resume} (and
        a server that keeps sessions) it is exactly once and in order: the
        message is kept until the server acknowledges it and sent again
        after a reconnection if need be; see L{sessionLost} for the one
        exception.

        @raise QueueFull: the queue (or the retransmit buffer) is full and
            C{overflow} is RAISE (with a registered producer: twice full,
            as the producer was paused at full).
        @raise LocalProtocolError: connected, and the message exceeds the
            server's frame limit.
        """
        self._send(message, None)

    #: IConsumer: each write is one message.
    write = sendMessage

    def sendConfirmed(self, message: bytes) -> Deferred[int | None]:
        """
        Send (or queue) one message and learn when it is delivered.

        With C{resume} the Deferred fires with the message's sequence
        number once the server has acknowledged it, across any number of
        reconnections, or fails with a L{DeliveryFailed} carrying the
        message: L{MessageLost} (the session was lost after the message was
        written: it may have arrived), L{MessageDropped} (the overflow
        policy), L{MessageTooLarge} (over the server's frame limit),
        L{DeliveryCancelled} (the factory stopped first).  Without
        C{resume} it fires with L{None} once the message is written to a
        connection (which may still die with it: at most once), or fails
        the same ways.

        @raise QueueFull: as L{sendMessage}.
        """
        receipt: Deferred[int | None] = Deferred()
        self._send(message, receipt)
        return receipt

    def _send(self, message: bytes, receipt: Deferred[int | None] | None) -> None:
        protocol = self.connected
        if protocol is not None and protocol.isOpen:
            # The connection pauses our producer itself (through the relay).
            self._sendOn(protocol, message, receipt)
            return
        if self.resumeSession is not None:
            self.resumeSession.store(message, receipt)  # counts what its policy drops
            if self.resumeSession.settled:
                fireReceipts(self.resumeSession)
        else:
            self._enqueue(message, receipt)
        if self._producer is not None:
            self._updateProducer()

    def _sendOn(
        self, protocol: HeartbeatProtocol, message: bytes, receipt: Deferred[int | None] | None
    ) -> None:
        if receipt is None:
            protocol.sendMessage(message)
        elif isinstance(protocol, HeartbeatProtocol):
            protocol._sendCarefully(message, receipt)
        else:  # a foreign-protocol shell (RawHeartbeatProtocol): written is all we know
            protocol.sendMessage(message)
            receipt.callback(None)

    def _enqueue(self, message: bytes, receipt: Deferred[int | None] | None) -> None:
        limit = self.queueSize * (2 if self._producer is not None else 1)
        if len(self.queue) >= limit:
            if self.overflow is Overflow.RAISE:
                raise QueueFull(f"send queue is full ({len(self.queue)} messages)")
            self._queueDropped += 1
            if self.overflow is Overflow.DROP_NEWEST or not self.queue:
                if receipt is not None:
                    receipt.errback(Failure(MessageDropped(message, "the send queue was full")))
                return
            old, oldReceipt = self.queue.popleft(), self._queueReceipts.popleft()
            if oldReceipt is not None:
                oldReceipt.errback(Failure(MessageDropped(old, "the send queue was full")))
        self.queue.append(message)
        self._queueReceipts.append(receipt)

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register the application's producer once, for every connection to
        come: it is paused while the factory cannot take more without
        dropping (see the class docstring) and resumed when it can.
        Streaming (push) producers only.
        """
        if not streaming or not IPushProducer.providedBy(producer):
            raise LocalProtocolError("only streaming (push) producers are supported")
        if self._producer is not None:
            raise LocalProtocolError(f"a producer is already registered: {self._producer!r}")
        self._producer = producer
        self._producerPaused = False
        if self.resumeSession is not None:
            self.resumeSession.elastic = True
        self._updateProducer()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producerPaused = False
        if self.resumeSession is not None:
            self.resumeSession.elastic = False

    def _blocked(self, drained: bool) -> bool:
        """
        Whether the application must wait: at the high-water mark (full),
        or, with C{drained}, until the low-water mark (half full).
        """
        protocol = self.connected
        if protocol is not None and protocol.isOpen:
            # The connection's own producer logic covers its transport and
            # the session, with the same marks.
            return self._relay.blocked
        session = self.resumeSession
        if session is not None:
            return not session.hasRoom if drained else session.isFull
        if drained:
            return len(self.queue) > self.queueSize // 2
        return len(self.queue) >= self.queueSize

    def _updateProducer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        if self._producerPaused:
            if not self._blocked(drained=True):
                self._producerPaused = False
                producer.resumeProducing()
        elif self._blocked(drained=False):
            self._producerPaused = True
            producer.pauseProducing()

    # Inbound flow control

    def pauseReading(self) -> None:
        """
        Stop reading from the server, on this connection and the next ones,
        until L{resumeReading}: for an application whose own output cannot
        keep up (memory stays bounded by one read).  The dead-peer timeout
        is suspended meanwhile (see L{HeartbeatProtocol.pauseReading}).
        """
        self._readingPaused = True
        protocol = self.connected
        if isinstance(protocol, HeartbeatProtocol) and protocol.isOpen:
            protocol.pauseReading()

    def resumeReading(self) -> None:
        self._readingPaused = False
        if isinstance(self.connected, HeartbeatProtocol):
            self.connected.resumeReading()

    def heartbeatMessageRefused(self, protocol: HeartbeatProtocol, event: Any) -> None:
        self.refused += 1
        self.messageRefused(event.message, event.reason)

    def messageRefused(self, message: bytes, reason: str) -> None:
        """
        A message queued before the server's frame limit was known exceeds
        it; it was taken out unsent (its receipt, if any, failed with
        L{MessageTooLarge}).  Logs it; override to do otherwise.
        """
        self.log.warn(
            "Message not sent to {server}: {reason}", server=self.currentServer, reason=reason
        )

    def heartbeatSessionLost(self, protocol: HeartbeatProtocol, event: Any) -> None:
        self.sessionsLost += 1
        self.undelivered += len(event.undelivered)
        if self.resumeSession is not None and self.resumeSession.settled:
            fireReceipts(self.resumeSession)
        self.sessionLost(event.undelivered, event.reason)

    def sessionLost(self, undelivered: list[bytes], reason: str) -> None:
        """
        Override: the server no longer had our session (its grace period
        ran out, or this is another server, or it keeps none), so the
        messages in C{undelivered}, sent and never acknowledged, may or may
        not have arrived.  They are not sent again; resend them here if
        at-least-once suits the application.  Already logged.
        """

    def stopTrying(self) -> None:
        """
        Stop for good, in any state: cancel a pending retry or attempt and
        close a live connection with CLOSE NORMAL.
        """
        self.continueTrying = False
        self._cancel("_retryCall")
        self._cancel("_connectTimer")
        self._cancel("_stableCall")
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        if self._pending is not None and self._pending.transport is not None:
            self._pending.abort(ConnectTimeout("stopped before the handshake"))
        self._pending = None
        if self.connector is not None:
            with contextlib.suppress(error.NotConnectingError):
                self.connector.stopConnecting()
        if self.connected is not None:
            self.connected.close(CloseCode.NORMAL, "client stopping")
        why = "the client was stopped"
        if self.resumeSession is not None:
            self.resumeSession.cancelReceipts(why)
            fireReceipts(self.resumeSession)
        receipts = list(zip(self.queue, self._queueReceipts, strict=True))
        self._queueReceipts = deque(None for _ in self.queue)
        for message, receipt in receipts:
            if receipt is not None:
                receipt.errback(Failure(DeliveryCancelled(message, why)))
        self._setState(ClientState.STOPPED)
        for d, _ in self._popWaiters(lambda limit: True):
            d.errback(Failure(CancelledError("the factory was stopped")))

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        if call is not None:
            if call.active():
                call.cancel()
            setattr(self, name, None)
