"""
The services behind C{twistd keepconn}, built from plain arguments (so a
C{.tac} file builds them as well as the plugin does): a client that keeps
a connection alive (with C{stdio}, a pipe of lines), and a server that
listens, serves in a mode, and shuts down gracefully.  Their C{/status}
and C{/metrics} come from L{StatusService}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .backoff import RetryPolicy
from .client import ClientState, KeepaliveClientFactory
from .cluster import NodeView
from .cluster_node import ClusterNode
from .config import HeartbeatConfig
from .connection import SESSION_GONE
from .heartbeat import HeartbeatProtocol
from .history import History, serverCounters
from .listen import Listener
from .metrics import metricsRegistry
from .raw import RawHeartbeatConfig, RawHeartbeatProtocol
from .server import DisconnectReason, KeepaliveServerFactory, ServerProtocol
from .session import Overflow
from .status import Totals, clientStatus, clusterStatus, serverStatus
from .stdio import EXIT_GAVE_UP, StdioPipe, exitStatus
from .systemd import SystemdNotifier

MODES = ("echo", "broadcast", "sink")

reactor: Any = _reactor
log = Logger()
#: READY=1, WATCHDOG=1 and STOPPING=1 for systemd (Type=notify), if it listens.
systemd = SystemdNotifier(reactor)

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

    def __init__(
        self,
        heartbeat: HeartbeatConfig,
        servers: Sequence[str],
        *,
        retryPolicy: RetryPolicy | None = None,
        failover: str = "order",
        stableAfter: float = 10.0,
        connectTimeout: float = 10.0,
        maxRetries: int | None = None,
        queueSize: int = 1000,
        stdio: bool = False,
        raw: RawHeartbeatConfig | None = None,
        verbose: bool = False,
    ) -> None:
        """
        @param servers: C{host:port} or client endpoint strings, in failover order.
        @param stdio: pipe standard input and output through the connection
            (a session, unless C{raw}).
        @param raw: keep alive a foreign protocol instead (L{RawHeartbeatProtocol}).
        @param verbose: log every heartbeat.
        """
        self.mode = "client"
        self.verbose = verbose
        self.factory = _ClientFactory(
            heartbeat,
            retryPolicy=retryPolicy,
            servers=list(servers),
            failover=failover,
            stableAfter=stableAfter,
            connectTimeout=connectTimeout,
            maxRetries=maxRetries,
            queueSize=queueSize,
            # A pipe of lines must survive drops: exactly once, in order.
            resume=stdio and raw is None,
        )
        self.factory.service = self
        if raw is not None:
            self.factory.protocol = lambda: _RawClientProtocol(raw)  # type: ignore[assignment,misc]
        else:
            self.factory.protocol = _ClientProtocol
        self.totals = Totals()
        self.registry, self.rtt = metricsRegistry(
            self.status, self.mode, "Heartbeat round-trip time."
        )
        self.pipe: StdioPipe | None = None
        if stdio:
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
        if self.pipe is None and self.verbose:
            srtt = protocol.rtt.srtt if protocol.rtt is not None else None
            log.info(
                "Heartbeat from {server}: rtt {rtt_ms:.3f} ms (smoothed {srtt_ms:.3f} ms)",
                server=self.factory.currentServer,
                rtt_ms=rtt * 1000,
                srtt_ms=(srtt or 0.0) * 1000,
            )

    def status(self) -> dict[str, Any]:
        return clientStatus(self.factory, self.totals)


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
            cluster = self.cluster
            core = protocol.core
            clientId = core.peerHello.clientId if core and core.peerHello else None
            if cluster is not None and clientId is not None:
                # To every other client of every node (Redis down: this node's).
                cluster.broadcast(message, exclude=clientId).addErrback(lambda f: None)
            else:
                self.broadcast(message, where=lambda p: p is not protocol)

    def clientConnected(self, protocol: HeartbeatProtocol) -> None:
        protocol.peerLog("connected", "info", "Client {peer} connected")

    def clientDisconnected(self, protocol: HeartbeatProtocol, reason: DisconnectReason) -> None:
        self.service.totals.add(protocol)
        if protocol.core is not None and protocol.core.handshakeAt is not None:
            # Only clients say goodbye; a connection that never completed
            # its handshake was already logged for what it did wrong.
            protocol.peerLog("left", "info", "Client {peer} left: {reason}", reason=reason.value)


class KeepaliveServerService(Listener):
    """
    Listens, serves, and shuts down gracefully: stop accepting, tell every
    client to go away (with spread retry-after hints), wait, abort the rest.
    """

    def __init__(
        self,
        listen: str,
        heartbeat: HeartbeatConfig,
        *,
        mode: str = "echo",
        maxConnections: int | None = None,
        sessionGrace: float | None = 60.0,
        sessionBuffer: int = 10_000,
        maxHandshaking: int = 256,
        maxSessions: int = 10_000,
        memoryBudget: int = 256 << 20,
        shutdownTimeout: float = 5.0,
        cluster: str | None = None,
        node: str | None = None,
        clusterTTL: float = 6.0,
        endpoint: Any = None,
    ) -> None:
        """
        @param listen: a server endpoint string, such as C{tcp:9000}.
        @param cluster: a Redis URL (C{redis://127.0.0.1:6379/0}): this
            server is one node of a cluster (docs/cluster.md), named
            C{node} (default: host name and process id), its presence
            expiring C{clusterTTL} seconds after it stops renewing it.
        @param endpoint: listen there rather than on C{listen} (which then
            only names it), such as a L{ReusePortEndpoint}.
        @param mode: C{echo} (each message back to its sender), C{broadcast}
            (to every other client) or C{sink} (dropped).
        @param sessionGrace: seconds a session is kept for a resume;
            L{None} or 0: no sessions.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = "server"
        self.listen = listen
        self.shutdownTimeout = shutdownTimeout
        self.factory = _ModeServerFactory(
            heartbeat,
            maxConnections=maxConnections,
            sessionGrace=sessionGrace or None,
            sessionBuffer=sessionBuffer,
            sessionOverflow=Overflow.RAISE,
            maxHandshaking=maxHandshaking,
            maxSessions=maxSessions,
            memoryBudget=memoryBudget,
        )
        self.factory.mode = mode
        self.factory.service = self
        self.totals = Totals()
        self.history = History(serverCounters(self.factory))
        self.cluster: ClusterNode | None = None
        if cluster is not None:
            from .redis_cluster import RedisCluster, defaultNodeName

            backend = RedisCluster(
                cluster,
                node or defaultNodeName(),
                ttl=clusterTTL,
                sessionTTL=sessionGrace or 0.0,
            )
            self.cluster = ClusterNode(self.factory, backend, listen=listen, history=self.history)
        self.registry, self.rtt = metricsRegistry(
            self.status, self.mode, "Round-trip time measured by the server's own probes."
        )
        super().__init__(listen, self.factory, endpoint)

    def startService(self) -> None:
        super().startService()  # listening by now (privilegedStartService)
        self.history.start()
        if self.cluster is not None:
            self.cluster.start()
        systemd.markReady(f"listening on {self.listen}")

    def stopService(self) -> Deferred[Any]:
        systemd.stopping()
        self.history.stop()
        stopped = super().stopService()  # stop accepting first
        shutdown = self.factory.shutdown(timeout=self.shutdownTimeout)
        cluster = self.cluster
        if cluster is not None:
            # Leave the cluster once the clients are gone (their sessions
            # saved for the node they go to).
            shutdown.addBoth(lambda _: cluster.stop())
        return DeferredList([d for d in (stopped, shutdown) if d is not None])

    def status(self) -> dict[str, Any]:
        status = serverStatus(self.factory, self.totals)
        status["history"] = self.history.asJSON()
        if self.cluster is not None:
            status["cluster"] = clusterStatus(self.cluster)
        return status

    def fullStatus(self) -> Deferred[dict[str, Any]]:
        """
        L{status}, and in a cluster every node and every client (read from
        Redis: the live view's source).
        """
        status = self.status()
        cluster = self.cluster
        if cluster is None:
            return succeed(status)

        def add(nodes: list[NodeView]) -> dict[str, Any]:
            status["cluster"]["nodes"] = [
                {**n.info, "name": n.name, "clients": len(n.clients)} for n in nodes
            ]
            status["cluster"]["connections"] = [p.asJSON() for n in nodes for p in n.clients]
            return status

        def unavailable(f: Failure) -> dict[str, Any]:
            status["cluster"]["error"] = str(f.value)
            return status

        return cluster.view().addCallbacks(add, unavailable)
