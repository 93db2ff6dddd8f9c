"""
The services behind C{twistd keepconn}: a client, a server, and the status
endpoint (C{/status} as JSON, C{/metrics} for Prometheus).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .client import ClientState, KeepaliveClientFactory
from .connection import SESSION_GONE
from .heartbeat import HeartbeatProtocol
from .raw import RawHeartbeatProtocol
from .server import DisconnectReason, KeepaliveServerFactory, ServerProtocol
from .stdio import EXIT_GAVE_UP, StdioPipe, exitStatus
from .systemd import SystemdNotifier

if TYPE_CHECKING:
    from .tap import Options

reactor: Any = _reactor
log = Logger()
#: READY=1, WATCHDOG=1 and STOPPING=1 for systemd (Type=notify), if it listens.
systemd = SystemdNotifier(reactor)

RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def metricsRegistry(service: Any, rttHelp: str) -> tuple[CollectorRegistry, Histogram]:
    """
    A registry of the service's own: an RTT histogram, observed as PONGs
    arrive, and the collector that reads everything else at scrape time.
    """
    registry = CollectorRegistry()
    rtt = Histogram("keepalive_rtt_seconds", rttHelp, buckets=RTT_BUCKETS, registry=registry)
    registry.register(_Collector(service))
    # The process (CPU, memory, file descriptors) and what is running.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    from twisted import __version__ as twistedVersion

    from . import __version__

    Info("keepalive_build", "Versions running.", registry=registry).info(
        {"version": __version__, "twisted": twistedVersion, "mode": service.mode}
    )
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


#: /status key (snake_case, as every key there) -> the engine's counter.
COUNTERS = {
    "frames_in": "framesIn",
    "frames_out": "framesOut",
    "bytes_in": "bytesIn",
    "bytes_out": "bytesOut",
}


def _counters(protocol: Any) -> dict[str, int]:
    core = getattr(protocol, "core", None)
    if core is None:
        return {}  # not connected, or a foreign protocol: no frames
    return {key: getattr(core, name) for key, name in COUNTERS.items()}


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
        self.factory.service.deliver(data)

    def pongReceived(self, rtt: float) -> None:
        self.factory.service.rttObserved(rtt, self)


class _ClientFactory(KeepaliveClientFactory):
    service: KeepaliveClientService

    def heartbeatConnectionLost(self, protocol: Any, reason: Failure) -> None:
        self.service.totals.add(protocol)
        super().heartbeatConnectionLost(protocol, reason)

    def messageRefused(self, message: bytes, reason: str) -> None:
        if self.service.pipe is None:
            super().messageRefused(message, reason)
        # else: the pipe reports the line, with its number, from its receipt

    def sessionLost(self, undelivered: list[bytes], reason: str) -> None:
        if self.service.pipe is not None:
            self.service.pipe.noteSessionLost(undelivered, reason == SESSION_GONE)


class KeepaliveClientService(Service):
    """
    Keeps a connection to the configured servers alive; with C{--stdio},
    pipes lines through it (L{StdioPipe}).
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.mode = "client"
        raw = options["raw"]
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
            resume=bool(options["stdio"]) and raw is None,
        )
        self.factory.service = self
        if raw is not None:
            self.factory.protocol = lambda: _RawClientProtocol(raw)  # type: ignore[assignment,misc]
        else:
            self.factory.protocol = _ClientProtocol
        self.totals = Totals()
        self.registry, self.rtt = metricsRegistry(self, "Heartbeat round-trip time.")
        self.pipe: StdioPipe | None = None
        if options["stdio"]:
            self.pipe = StdioPipe(self.factory, reactor, exitStatus.fail, raw=raw is not None)
        self._stopping = False
        self.factory.addStateObserver(self._stateChanged)

    def startService(self) -> None:
        super().startService()
        if self.pipe is not None:
            self.pipe.start()
        self.factory.connect()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        systemd.stopping()
        self._stopping = True
        if self.pipe is not None:
            self.pipe.cancel()
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

    def deliver(self, message: bytes) -> None:
        if self.pipe is not None:
            self.pipe.deliver(message)

    def _stateChanged(self, old: ClientState, new: ClientState) -> None:
        if new is ClientState.CONNECTED:
            # Ready once connected; systemd's STATUS says where, later.
            where = f"connected to {self.factory.currentServer}"
            if systemd.ready:
                systemd.status(where)
            else:
                systemd.markReady(where)
        elif old is ClientState.CONNECTED and systemd.ready:
            systemd.status(f"{new.value}: {self.factory.lastError}")
        if new is ClientState.CONNECTED and self.pipe is not None:
            self.pipe.connectionReady()
        elif new is ClientState.STOPPED and not self._stopping:
            # Only --max-retries stops the factory by itself.
            self._stopping = True  # the factory said why, in one line
            exitStatus.fail(EXIT_GAVE_UP)
            reactor.callLater(0, reactor.stop)

    # status

    def rttObserved(self, rtt: float, protocol: Any) -> None:
        self.rtt.observe(rtt)
        if self.pipe is None and self.options["verbose"]:
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
            "undelivered": f.undelivered,
            "dropped": f.dropped,
            "refused": f.refused,
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
            self.push(protocol, message)
        elif self.mode == "broadcast":
            self.broadcast(message, where=lambda p: p is not protocol)

    def clientConnected(self, protocol: HeartbeatProtocol) -> None:
        protocol.peerLog("connected", "info", "Client {peer} connected")

    def clientDisconnected(self, protocol: HeartbeatProtocol, reason: DisconnectReason) -> None:
        self.service.totals.add(protocol)
        if protocol.core is not None and protocol.core.handshakeAt is not None:
            # Only clients say goodbye; a connection that never completed
            # its handshake was already logged for what it did wrong.
            protocol.peerLog("left", "info", "Client {peer} left: {reason}", reason=reason.value)


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
            sessionBuffer=options["session-buffer"],
            maxHandshaking=options["max-handshaking"],
            maxSessions=options["max-sessions"],
            memoryBudget=options["memory-budget"],
        )
        self.factory.mode = options["mode"]
        self.factory.service = self
        self.totals = Totals()
        self.registry, self.rtt = metricsRegistry(
            self, "Round-trip time measured by the server's own probes."
        )
        super().__init__(options["listen"], self.factory)

    def startService(self) -> None:
        super().startService()  # listening by now (privilegedStartService)
        systemd.markReady(f"listening on {self.options['listen']}")

    def stopService(self) -> Deferred[Any]:
        systemd.stopping()
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
            "unacknowledged": sum(len(s) for s in f.sessions.values()),
            "sessions_resumed": f.sessionsResumed,
            "sessions_expired": f.sessionsExpired,
            "slow_consumers": f.slowConsumers,
            "push_refused": f.pushRefused,
            "handshaking": len(f._handshaking),
            "crowded_out": f.crowdedOut,
            "sessions_evicted": f.sessionsEvicted,
            "sessions_refused": f.sessionsRefused,
            "resumes_refused": f.resumesRefused,
            "memory_used": f.memoryBudget.used,
            "memory_budget": f.memoryBudget.limit,
            "memory_refusals": f.memoryBudget.refusals,
            "log_lines_suppressed": f.peerLog.suppressed if f.peerLog is not None else 0,
            **self.totals.withLive(list(f.connections)),
        }


# Signals


class GracefulSignals(Service):
    """
    SIGTERM and SIGINT stop the reactor gracefully and let twistd exit with
    status 0: the services' own stopService sends CLOSE (a client) or
    GOING_AWAY (a server) first.  (twistd's own handlers re-raise the signal
    after shutdown, which makes the exit status 128 + signal.)  SIGHUP
    reopens the log file.
    """

    def startService(self) -> None:
        super().startService()
        reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        import signal

        def stop(number: int, frame: Any) -> None:
            log.info("Received {signal}; stopping gracefully", signal=signal.Signals(number).name)
            reactor.callFromThread(reactor.stop)

        def hangup(number: int, frame: Any) -> None:
            reactor.callFromThread(reopenLog)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)


def _twistdLogFile() -> Any:
    """
    The log file twistd writes (C{--logfile}), found where twistd keeps it:
    in the SIGUSR1 handler it installs to rotate it.  L{None} when logging
    goes to standard output or syslog.
    """
    import signal

    from twisted.python.logfile import LogFile

    handler = signal.getsignal(signal.SIGUSR1)
    for cell in getattr(handler, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, LogFile):
            return value
    return None


def reopenLog() -> None:
    """
    SIGHUP: reopen the log file, for rotation tools that move it aside
    (logrotate without copytruncate).  Before, SIGHUP killed the server
    without a word to its clients.
    """
    logFile = _twistdLogFile()
    if logFile is None:
        log.info("Received SIGHUP: no log file to reopen (logging to a stream)")
        return
    logFile.reopen()
    log.info("Received SIGHUP: reopened {path}", path=logFile.path)


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
        frames.add_metric(["in"], status["frames_in"])
        frames.add_metric(["out"], status["frames_out"])
        yield frames
        sizes = CounterMetricFamily("keepalive_bytes", "Bytes on the wire.", labels=["direction"])
        sizes.add_metric(["in"], status["bytes_in"])
        sizes.add_metric(["out"], status["bytes_out"])
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
            yield GaugeMetricFamily(
                "keepalive_client_unacknowledged_messages",
                "Messages of the session not yet acknowledged by the server.",
                status["unacknowledged"],
            )
            yield CounterMetricFamily(
                "keepalive_client_sessions_lost",
                "Sessions the server no longer had (messages may be lost).",
                status["sessions_lost"],
            )
            lost = CounterMetricFamily(
                "keepalive_client_messages_not_delivered",
                "Messages that may not have arrived, by why.",
                labels=["why"],
            )
            lost.add_metric(["session_lost"], status["undelivered"])
            lost.add_metric(["dropped"], status["dropped"])
            lost.add_metric(["refused"], status["refused"])
            yield lost
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
            yield GaugeMetricFamily(
                "keepalive_server_sessions", "Sessions kept (live or in grace).", status["sessions"]
            )
            yield GaugeMetricFamily(
                "keepalive_server_unacknowledged_messages",
                "Messages to clients kept in sessions until acknowledged.",
                status["unacknowledged"],
            )
            yield CounterMetricFamily(
                "keepalive_server_sessions_expired",
                "Sessions forgotten after their grace period.",
                status["sessions_expired"],
            )
            yield CounterMetricFamily(
                "keepalive_server_slow_consumers",
                "Push recipients closed because their session buffer was full.",
                status["slow_consumers"],
            )
            yield GaugeMetricFamily(
                "keepalive_server_handshaking",
                "Connections in their handshake.",
                status["handshaking"],
            )
            yield CounterMetricFamily(
                "keepalive_server_crowded_out",
                "Connections dropped in their handshake to make room for a newer one.",
                status["crowded_out"],
            )
            ended = CounterMetricFamily(
                "keepalive_server_sessions_ended",
                "Sessions forgotten with messages maybe undelivered, by why.",
                labels=["why"],
            )
            ended.add_metric(["expired"], status["sessions_expired"])
            ended.add_metric(["evicted"], status["sessions_evicted"])
            yield ended
            refused = CounterMetricFamily(
                "keepalive_server_sessions_refused",
                "Session handshakes refused, by why.",
                labels=["why"],
            )
            refused.add_metric(["limit"], status["sessions_refused"])
            refused.add_metric(["resume"], status["resumes_refused"])
            yield refused
            yield GaugeMetricFamily(
                "keepalive_server_memory_used_bytes",
                "Bytes held in session buffers and unread output.",
                status["memory_used"],
            )
            yield GaugeMetricFamily(
                "keepalive_server_memory_budget_bytes",
                "The limit on memory_used.",
                status["memory_budget"],
            )
            yield CounterMetricFamily(
                "keepalive_server_log_lines_suppressed",
                "Log lines about peers not written (one per peer host and kind per period).",
                status["log_lines_suppressed"],
            )


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
        site.log = lambda request: None  # type: ignore[method-assign]  # no access log
        super().__init__(description, site)
