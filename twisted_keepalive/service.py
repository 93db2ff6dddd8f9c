"""
The services behind C{twistd keepconn}: a client, a server, and the status
endpoint (C{/status} as JSON, C{/metrics} for Prometheus).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.stdio import StandardIO
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from .client import ClientState, KeepaliveClientFactory
from .heartbeat import HeartbeatProtocol
from .raw import RawHeartbeatProtocol
from .server import DisconnectReason, KeepaliveServerFactory, ServerProtocol

if TYPE_CHECKING:
    from .tap import Options

reactor: Any = _reactor
log = Logger()

RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def metricsRegistry(service: Any, rttHelp: str) -> tuple[CollectorRegistry, Histogram]:
    """
    A registry of the service's own: an RTT histogram, observed as PONGs
    arrive, and the collector that reads everything else at scrape time.
    """
    registry = CollectorRegistry()
    rtt = Histogram("keepalive_rtt_seconds", rttHelp, buckets=RTT_BUCKETS, registry=registry)
    registry.register(_Collector(service))
    return registry, rtt


def _listen(description: str) -> Any:
    return serverFromString(reactor, description)


class _Listener(StreamServerEndpointService):
    """
    Listens at start-up; a port that cannot be had stops twistd with one
    line, not a traceback.
    """

    _raiseSynchronously = True

    def __init__(self, description: str, factory: Any) -> None:
        super().__init__(_listen(description), factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            why = e.socketError.strerror if e.socketError is not None else str(e)
            raise SystemExit(f"keepconn: cannot listen on {self.description}: {why}") from None


COUNTERS = ("framesIn", "framesOut", "bytesIn", "bytesOut")


def _counters(protocol: Any) -> dict[str, int]:
    core = getattr(protocol, "core", None)
    if core is None:
        return {}  # not connected, or a foreign protocol: no frames
    return {name: getattr(core, name) for name in COUNTERS}


class Totals:
    """
    Frames and bytes of connections that have ended, so counters never go
    down when a connection does.
    """

    def __init__(self) -> None:
        self.ended: Counter[str] = Counter()

    def add(self, protocol: Any) -> None:
        self.ended.update(_counters(protocol))

    def withLive(self, live: list[Any]) -> dict[str, int]:
        total = Counter(self.ended)
        for protocol in live:
            total.update(_counters(protocol))
        return {name: total[name] for name in COUNTERS}


# Client


class _ClientProtocol(HeartbeatProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.factory.service.deliver(message)

    def pongReceived(self, rtt: float) -> None:
        self.factory.service.rttObserved(rtt, self)


class _RawClientProtocol(RawHeartbeatProtocol):
    def rawDataReceived(self, data: bytes) -> None:
        if self.factory.service.stdio is not None:
            self.factory.service.stdio.write(data)

    def pongReceived(self, rtt: float) -> None:
        self.factory.service.rttObserved(rtt, self)


class _ClientFactory(KeepaliveClientFactory):
    service: KeepaliveClientService

    def heartbeatConnectionLost(self, protocol: Any, reason: Failure) -> None:
        self.service.totals.add(protocol)
        super().heartbeatConnectionLost(protocol, reason)


@implementer(IHalfCloseableProtocol)
class _StdinLines(LineReceiver):
    """
    Lines from standard input.  Half-closeable: at end of input, standard
    output stays open for the replies still to come.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, service: KeepaliveClientService) -> None:
        self.service = service

    def lineReceived(self, line: bytes) -> None:
        self.service.sendLine(line.rstrip(b"\r"))

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("Standard input line over {limit} bytes dropped", limit=self.MAX_LENGTH)

    def readConnectionLost(self) -> None:
        self.service.stdinClosed()

    def writeConnectionLost(self) -> None:
        pass


#: With --stdio, after standard input ends and every line is acknowledged,
#: how long nothing must arrive before the client leaves.
STDIO_QUIET = 0.5


class KeepaliveClientService(Service):
    """
    Keeps a connection to the configured servers alive; with C{--stdio},
    pipes lines through it.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.mode = "client"
        self.factory = _ClientFactory(
            options["heartbeat"],
            retryPolicy=options.retryPolicy(),
            servers=options["servers"],
            failover=options["failover"],
            stableAfter=options["reset-after"],
            connectTimeout=options["connect-timeout"],
            maxRetries=options["max-retries"],
            queueSize=options["queue-size"],
            # A pipe of lines must survive drops: exactly once, in order.
            resume=bool(options["stdio"]) and options["raw"] is None,
        )
        self.factory.service = self
        raw = options["raw"]
        if raw is not None:
            self.factory.protocol = lambda: _RawClientProtocol(raw)  # type: ignore[assignment,misc]
        else:
            self.factory.protocol = _ClientProtocol
        self.totals = Totals()
        self.registry, self.rtt = metricsRegistry(self, "Heartbeat round-trip time.")
        self.stdio: StandardIO | None = None
        self._stdinDone = False
        self._stopping = False
        self._lastDelivered = 0.0
        self._drainCheck: Any = None
        self.factory.addStateObserver(self._stateChanged)

    def startService(self) -> None:
        super().startService()
        if self.options["stdio"]:
            self.stdio = StandardIO(_StdinLines(self))
        self.factory.connect()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        protocol = self.factory.connected
        self.factory.stopTrying()
        if protocol is None or protocol.transport is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        previous = protocol.connectionClosed

        def closed(reason: Failure) -> None:
            previous(reason)
            done.callback(None)

        protocol.connectionClosed = closed  # type: ignore[method-assign]
        return done

    # stdio

    def sendLine(self, line: bytes) -> None:
        if self.options["raw"] is not None:
            line += b"\n"
        try:
            self.factory.sendMessage(line)
        except Exception as e:  # QueueFull, or a message over the peer's limit
            log.warn("Line not sent: {error}", error=str(e))

    def deliver(self, message: bytes) -> None:
        self._lastDelivered = reactor.seconds()
        if self.stdio is not None:
            self.stdio.write(message + b"\n")

    def stdinClosed(self) -> None:
        self._stdinDone = True
        self._stopIfDrained()

    def _stateChanged(self, old: ClientState, new: ClientState) -> None:
        if new is ClientState.CONNECTED:
            self._stopIfDrained()

    def _stopIfDrained(self) -> None:
        # Standard input is done and every line has been written (with a
        # session: acknowledged by the server): leave.
        f = self.factory
        if not self._stdinDone or self._stopping:
            return
        unacked = len(f.resumeSession) if f.resumeSession is not None else 0
        # Replies may still be on their way (a replay after a resume): leave
        # once nothing has arrived for STDIO_QUIET seconds.
        quiet = reactor.seconds() - self._lastDelivered >= STDIO_QUIET
        if not f.queue and not unacked and quiet and f.connected is not None:
            self._stopping = True
            log.info("Standard input closed and every line delivered; stopping")
            reactor.callLater(0.2, reactor.stop)
        elif self._drainCheck is None:
            # Waiting for the server's acknowledgements (a few ackDelays),
            # for the replies to stop, or for a connection.
            self._drainCheck = reactor.callLater(0.05, self._checkAgain)

    def _checkAgain(self) -> None:
        self._drainCheck = None
        self._stopIfDrained()

    # status

    def rttObserved(self, rtt: float, protocol: Any) -> None:
        self.rtt.observe(rtt)
        if not self.options["stdio"]:
            srtt = protocol.rtt.srtt if protocol.rtt is not None else None
            log.info(
                "Heartbeat from {server}: rtt {rtt_ms:.3f} ms (smoothed {srtt_ms:.3f} ms)",
                server=self.factory.currentServer,
                rtt_ms=rtt * 1000,
                srtt_ms=(srtt or 0.0) * 1000,
            )

    def status(self) -> dict[str, Any]:
        f = self.factory
        protocol = f.connected
        estimator = protocol.rtt if protocol is not None else None
        srtt = estimator.srtt if estimator is not None else None
        return {
            "mode": "client",
            "state": "connecting" if f.state is ClientState.IDLE else f.state.value,
            "server": f.currentServer,
            "rtt": srtt,
            "reconnects": f.reconnects,
            "heartbeat_timeouts": f.heartbeatTimeouts,
            "connected_since": f.connectedSince,
            "queued": len(f.queue),
            "unacknowledged": len(f.resumeSession) if f.resumeSession is not None else 0,
            "sessions_lost": f.sessionsLost,
            "attempts": f.attempts,
            "failures": f.failures,
            "last_error": f.lastError,
            **self.totals.withLive([protocol] if protocol is not None else []),
        }


# Server


class _ServerProtocol(ServerProtocol):
    def pongReceived(self, rtt: float) -> None:
        self.factory.service.rtt.observe(rtt)


class _ModeServerFactory(KeepaliveServerFactory):
    protocol = _ServerProtocol
    service: KeepaliveServerService
    mode = "echo"

    def messageReceived(self, protocol: HeartbeatProtocol, message: bytes) -> None:
        if self.mode == "echo":
            protocol.sendMessage(message)
        elif self.mode == "broadcast":
            self.broadcast(message, where=lambda p: p is not protocol)

    def clientConnected(self, protocol: HeartbeatProtocol) -> None:
        log.info("Client {peer} connected", peer=protocol.peer)

    def clientDisconnected(self, protocol: HeartbeatProtocol, reason: DisconnectReason) -> None:
        self.service.totals.add(protocol)
        log.info("Client {peer} left: {reason}", peer=protocol.peer, reason=reason.value)


class KeepaliveServerService(_Listener):
    """
    Listens, serves, and shuts down gracefully: stop accepting, tell every
    client to go away (with spread retry-after hints), wait, abort the rest.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.mode = "server"
        grace = options["session-grace"]
        self.factory = _ModeServerFactory(
            options["heartbeat"],
            maxConnections=options["max-connections"],
            sessionGrace=grace if grace > 0 else None,
        )
        self.factory.mode = options["mode"]
        self.factory.service = self
        self.totals = Totals()
        self.registry, self.rtt = metricsRegistry(
            self, "Round-trip time measured by the server's own probes."
        )
        super().__init__(options["listen"], self.factory)

    def stopService(self) -> Deferred[Any]:
        stopped = super().stopService()  # stop accepting first
        shutdown = self.factory.shutdown(timeout=self.options["shutdown-timeout"])
        return DeferredList([d for d in (stopped, shutdown) if d is not None])

    def status(self) -> dict[str, Any]:
        f = self.factory
        return {
            "mode": "server",
            "connections": [
                {
                    "peer": info.peer,
                    "client_id": info.clientId,
                    "connected_since": info.connectedSince,
                    "last_received": info.lastReceived,
                    "rtt": info.rtt,
                }
                for info in f
            ],
            "evictions": f.evictions,
            "disconnects": {reason.value: n for reason, n in f.counts.items() if n},
            "sessions": len(f.sessions),
            "sessions_resumed": f.sessionsResumed,
            "sessions_expired": f.sessionsExpired,
            **self.totals.withLive(list(f.connections)),
        }


# Signals


class GracefulSignals(Service):
    """
    SIGTERM and SIGINT stop the reactor gracefully and let twistd exit with
    status 0: the services' own stopService sends CLOSE (a client) or
    GOING_AWAY (a server) first.  (twistd's own handlers re-raise the signal
    after shutdown, which makes the exit status 128 + signal.)
    """

    def startService(self) -> None:
        super().startService()
        reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        import signal

        def stop(number: int, frame: Any) -> None:
            log.info("Received {signal}; stopping gracefully", signal=signal.Signals(number).name)
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


# Status endpoint


class _Collector(Collector):
    """
    Metrics read from the service at scrape time: nothing is counted twice
    and nothing on the data path pays for metrics.  prometheus_client's
    Twisted resource scrapes in a thread; the snapshot is taken in the
    reactor thread.
    """

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        status = blockingCallFromThread(reactor, self.service.status)
        frames = CounterMetricFamily("keepalive_frames", "Frames.", labels=["direction"])
        frames.add_metric(["in"], status["framesIn"])
        frames.add_metric(["out"], status["framesOut"])
        yield frames
        sizes = CounterMetricFamily("keepalive_bytes", "Bytes on the wire.", labels=["direction"])
        sizes.add_metric(["in"], status["bytesIn"])
        sizes.add_metric(["out"], status["bytesOut"])
        yield sizes
        if status["mode"] == "client":
            state = GaugeMetricFamily(
                "keepalive_client_state", "1 for the current state.", labels=["state"]
            )
            for name in ("connecting", "connected", "waiting", "stopped"):
                state.add_metric([name], 1.0 if status["state"] == name else 0.0)
            yield state
            yield CounterMetricFamily(
                "keepalive_client_reconnects", "Successful reconnections.", status["reconnects"]
            )
            yield CounterMetricFamily(
                "keepalive_client_connect_attempts", "Connection attempts.", status["attempts"]
            )
            yield CounterMetricFamily(
                "keepalive_heartbeat_timeouts",
                "Connections aborted because the server went silent.",
                status["heartbeat_timeouts"],
            )
            yield GaugeMetricFamily(
                "keepalive_client_queued_messages",
                "Messages waiting for a connection.",
                status["queued"],
            )
            if status["rtt"] is not None:
                yield GaugeMetricFamily(
                    "keepalive_smoothed_rtt_seconds", "Smoothed RTT (RFC 6298).", status["rtt"]
                )
        else:
            yield GaugeMetricFamily(
                "keepalive_server_connections", "Live connections.", len(status["connections"])
            )
            yield CounterMetricFamily(
                "keepalive_server_evictions", "Clients evicted for silence.", status["evictions"]
            )
            gone = CounterMetricFamily(
                "keepalive_server_disconnects", "Clients gone, by reason.", labels=["reason"]
            )
            for reason in DisconnectReason:
                gone.add_metric([reason.value], status["disconnects"].get(reason.value, 0))
            yield gone


class _StatusResource(Resource):
    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.service.status(), indent=2).encode() + b"\n"


class StatusService(_Listener):
    """
    C{GET /status} (JSON) and C{GET /metrics} (Prometheus) for a service.
    """

    def __init__(self, description: str, service: Any) -> None:
        from prometheus_client.twisted import MetricsResource

        root = Resource()
        root.putChild(b"status", _StatusResource(service))
        root.putChild(b"metrics", MetricsResource(registry=service.registry))
        site = Site(root)
        site.noisy = False
        super().__init__(description, site)
