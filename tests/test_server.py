"""
KeepaliveServerFactory on a fake clock with in-memory clients.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_keepalive import CloseCode, HeartbeatConfig, HeartbeatProtocol, PeerClosed, Role
from twisted_keepalive.frames import Hello, encodeData, encodeHello, encodePing
from twisted_keepalive.server import DisconnectReason, KeepaliveServerFactory, ServerProtocol
from twisted_keepalive.testing import MemoryPair

from .helpers import ClockTestCase, Recorder

SERVER = HeartbeatConfig(interval=2.0, timeout=5.0, handshakeTimeout=3.0)


class ServerTestCase(ClockTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.pairs: list[MemoryPair] = []
        self.addCleanup(self.closeAll)

    def closeAll(self) -> None:
        for pair in self.pairs:
            if not pair.closed:
                pair.clientTransport.loseConnection()
                pair.pump()

    def makeFactory(self, **kwargs: Any) -> KeepaliveServerFactory:
        kwargs.setdefault("clock", self.clock)
        self.events: list[tuple[str, Any]] = []
        events = self.events

        class Recording(KeepaliveServerFactory):
            protocol = ServerProtocol

            def clientConnected(self, protocol: HeartbeatProtocol) -> None:
                events.append(("connected", protocol))

            def clientDisconnected(
                self, protocol: HeartbeatProtocol, reason: DisconnectReason
            ) -> None:
                events.append((reason.value, protocol))

            def messageReceived(self, protocol: HeartbeatProtocol, message: bytes) -> None:
                events.append(("message", message))

        return Recording(kwargs.pop("config", SERVER), **kwargs)

    def connect(
        self,
        factory: KeepaliveServerFactory,
        clientId: str | None = None,
        port: int = 50000,
        token: bytes | None = None,
        connect: bool = True,
        timeout: float = 3.0,
    ) -> tuple[Recorder, Any, MemoryPair]:
        config = HeartbeatConfig(interval=1.0, timeout=timeout, clientId=clientId, token=token)
        client = Recorder(config, role=Role.CLIENT, clock=self.clock)
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        pair = MemoryPair(client, server, self.clock)
        pair.serverTransport.peerAddr = IPv4Address("TCP", "127.0.0.1", port)
        self.pairs.append(pair)
        if connect:
            pair.connect()
        return client, server, pair

    def rawClient(self, factory: KeepaliveServerFactory, interval: float = 2.0) -> tuple[Any, Any]:
        """
        A server protocol driven by raw frames from the test.
        """
        server = factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(encodeHello(Hello(1, interval, 3 * interval, 4096)))
        self.addCleanup(self.closeRaw, server, transport)
        return server, transport

    def closeRaw(self, server: Any, transport: StringTransport) -> None:
        if server.core is not None and not server.closeReason:
            server.connectionLost(Failure(ConnectionDone()))

    def step(self, seconds: float) -> None:
        while seconds > 1e-12:
            delta = min(0.125, seconds)
            self.clock.advance(delta)
            seconds -= delta
            for pair in self.pairs:
                pair.pump()


class EvictionTests(ServerTestCase):
    def test_silentClientEvictedExactlyAtTheBound(self) -> None:
        factory = self.makeFactory()
        client, server, pair = self.connect(factory, "quiet", timeout=100.0)
        pair.clientToServer = False  # alive but silent, socket open
        self.step(4.875)
        self.assertTrue(server.isOpen)
        self.step(0.125)
        self.assertFalse(server.isOpen)
        self.assertEqual(factory.evictions, 1)
        self.assertEqual(factory.counts[DisconnectReason.EVICTED], 1)
        self.assertEqual([e for e, _ in self.events], ["connected", "evicted"])
        self.assertIsNone(factory.get("quiet"))

    def test_wellBehavedClientNeverEvicted(self) -> None:
        factory = self.makeFactory()
        client, server, pair = self.connect(factory, "good")
        self.step(60.0)
        self.assertTrue(server.isOpen and client.isOpen)
        self.assertEqual(factory.evictions, 0)
        self.assertEqual(server.stats.pingsReceived, 60)

    def test_clientTakesTheServersInterval(self) -> None:
        factory = self.makeFactory(config=HeartbeatConfig(interval=0.5, timeout=1.5))
        client, server, pair = self.connect(factory)
        self.assertEqual(client.stats.interval, 0.5)
        self.step(10.0)
        self.assertTrue(server.isOpen)


class RegistryAndPushTests(ServerTestCase):
    def test_registryContents(self) -> None:
        factory = self.makeFactory()
        self.connect(factory, "a", port=50001)
        self.step(1.0)
        self.connect(factory, "b", port=50002)
        self.connect(factory, None, port=50003)
        self.step(1.5)
        infos = sorted(factory, key=lambda i: i.peer)
        self.assertEqual(
            [i.peer for i in infos], ["127.0.0.1:50001", "127.0.0.1:50002", "127.0.0.1:50003"]
        )
        self.assertEqual([i.clientId for i in infos], ["a", "b", None])
        self.assertEqual([i.connectedSince for i in infos], [0.0, 1.0, 1.0])
        self.assertEqual(infos[0].lastReceived, 2.0)  # its last ping
        self.assertTrue(all(i.framesIn >= 2 and i.bytesIn > 0 and i.bytesOut > 0 for i in infos))
        self.assertIs(
            factory.get("a"),
            next(p for p in factory.connections if p.core.peerHello.clientId == "a"),
        )

    def test_sendAndBroadcast(self) -> None:
        factory = self.makeFactory()
        a, _, _ = self.connect(factory, "a")
        b, _, _ = self.connect(factory, "b")
        c, _, _ = self.connect(factory)
        self.assertTrue(factory.send("a", b"just a"))
        self.assertFalse(factory.send("nobody", b"x"))
        self.assertEqual(factory.broadcast(b"all"), 3)
        n = factory.broadcast(b"ids", where=lambda p: p.core.peerHello.clientId is not None)
        self.assertEqual(n, 2)
        for pair in self.pairs:
            pair.pump()
        self.assertEqual(a.messages, [b"just a", b"all", b"ids"])
        self.assertEqual(b.messages, [b"all", b"ids"])
        self.assertEqual(c.messages, [b"all"])

    def test_messagesReachTheHook(self) -> None:
        factory = self.makeFactory()
        client, _, pair = self.connect(factory)
        client.sendMessage(b"up")
        pair.pump()
        self.assertIn(("message", b"up"), self.events)

    def test_sameClientIdReplacesTheOldConnection(self) -> None:
        factory = self.makeFactory()
        old, oldServer, _ = self.connect(factory, "dev")
        new, newServer, _ = self.connect(factory, "dev")
        for pair in self.pairs:
            pair.pump()
        self.assertIs(factory.get("dev"), newServer)
        self.assertIsInstance(old.closed[0], PeerClosed)
        self.assertIn("replaced", old.closed[0].reason)
        self.assertEqual(factory.counts[DisconnectReason.REPLACED], 1)

    def test_slowConsumerDroppedNotBuffered(self) -> None:
        factory = self.makeFactory(
            config=HeartbeatConfig(interval=2, timeout=5, maxPendingOutput=10_000)
        )
        client, server, pair = self.connect(factory, "slow")
        server.pauseProducing()  # what the transport does when its buffer fills
        for _ in range(9):
            factory.send("slow", b"x" * 1000)
        self.assertTrue(server.isOpen)
        factory.send("slow", b"x" * 1000)
        factory.send("slow", b"x" * 1000)
        pair.pump()
        self.assertFalse(server.isOpen)
        self.assertEqual(factory.counts[DisconnectReason.SLOW_CONSUMER], 1)

    def test_resumeResetsTheCount(self) -> None:
        factory = self.makeFactory(
            config=HeartbeatConfig(interval=2, timeout=5, maxPendingOutput=10_000)
        )
        client, server, pair = self.connect(factory, "ok")
        for _ in range(5):
            server.pauseProducing()
            for _ in range(9):
                factory.send("ok", b"x" * 1000)
            server.resumeProducing()
        pair.pump()
        self.assertTrue(server.isOpen)
        self.assertEqual(len(client.messages), 45)


class LimitTests(ServerTestCase):
    def test_maxConnectionsRefusedWithReasonAndHint(self) -> None:
        factory = self.makeFactory(maxConnections=2, fullRetryAfter=5.0, random=lambda: 0.5)
        self.connect(factory)
        self.connect(factory)
        third, _, _ = self.connect(factory)
        reason = third.closed[0]
        self.assertIsInstance(reason, PeerClosed)
        self.assertEqual((reason.code, reason.retryAfter), (CloseCode.TOO_MANY_CONNECTIONS, 7.5))
        self.assertEqual(len(factory.connections), 2)
        self.assertEqual(factory.counts[DisconnectReason.LIMIT], 1)

    def test_handshakeTimeout(self) -> None:
        factory = self.makeFactory()
        _, server, pair = self.connect(factory, connect=False)
        server.makeConnection(pair.serverTransport)  # a client that says nothing
        self.step(2.875)
        self.assertFalse(pair.serverTransport.disconnecting)
        self.step(0.125)
        self.assertTrue(pair.serverTransport.disconnected)
        self.assertEqual(factory.counts[DisconnectReason.HANDSHAKE_TIMEOUT], 1)

    def test_pingFloodClosed(self) -> None:
        factory = self.makeFactory()
        server, transport = self.rawClient(factory, interval=2.0)
        for i in range(3):
            server.dataReceived(encodePing(100 + i, 0))
            self.clock.advance(0.1)
        self.assertTrue(server.isOpen)  # two strikes: tolerated
        server.dataReceived(encodePing(200, 0))
        self.assertFalse(server.isOpen)
        self.assertIn(b"pinging faster", transport.value())
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.counts[DisconnectReason.TOO_MANY_PINGS], 1)

    def test_strikesDecay(self) -> None:
        # Bunched pings now and then (a stalled network delivering them
        # together) never add up: each ping on time takes a strike away.
        factory = self.makeFactory()
        server, _ = self.rawClient(factory, interval=2.0)
        for burst in range(10):
            self.clock.advance(2.0)
            for i in range(3):  # one on time, then two bunched: 2 strikes
                server.dataReceived(encodePing(burst * 10 + i, 0))
                self.clock.advance(0.01)
            for i in range(3):  # three on time
                self.clock.advance(2.0)
                server.dataReceived(encodePing(burst * 10 + 5 + i, 0))
        self.assertTrue(server.isOpen)
        self.assertEqual(factory.counts[DisconnectReason.TOO_MANY_PINGS], 0)
        server.close()

    def test_floodAgainstTheNegotiatedInterval(self) -> None:
        # Proposing 1 ms buys nothing: the server's floor (0.1 s) is the
        # interval, and pings faster than half of it are strikes.
        factory = self.makeFactory()
        server, transport = self.rawClient(factory, interval=0.001)
        self.assertEqual(server.core.interval, 0.1)
        for i in range(10):
            server.dataReceived(encodePing(i, 0))
            self.clock.advance(0.001)
        self.assertFalse(server.isOpen)
        self.assertIn(b"pinging faster", transport.value())
        server.connectionLost(Failure(ConnectionDone()))

    def test_pingsAtTheIntervalAreFine(self) -> None:
        factory = self.makeFactory()
        server, _ = self.rawClient(factory, interval=2.0)
        for i in range(10):
            server.dataReceived(encodePing(100 + i, 0))
            self.clock.advance(1.0)  # half the 2 s interval: exactly the tolerance
        self.assertTrue(server.isOpen)
        server.close()

    def test_tokenAccepted(self) -> None:
        factory = self.makeFactory(config=HeartbeatConfig(interval=2, timeout=5, token=b"k3y"))
        client, server, _ = self.connect(factory, token=b"k3y")
        self.assertTrue(server.isOpen and client.isOpen)

    def test_wrongTokenRefusedAndNoDataAccepted(self) -> None:
        factory = self.makeFactory(config=HeartbeatConfig(interval=2, timeout=5, token=b"k3y"))
        _, server, pair = self.connect(factory, connect=False)
        server.makeConnection(pair.serverTransport)
        hello = encodeHello(Hello(1, 1.0, 3.0, 4096, "intruder", b"guess"))
        server.dataReceived(hello + encodeData(b"smuggled"))
        self.assertNotIn(("message", b"smuggled"), self.events)
        self.assertIn(b"wrong or missing token", pair.serverTransport.value())
        pair.closed = True
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.counts[DisconnectReason.AUTH], 1)
        self.assertEqual([e for e, _ in self.events], ["auth"])

    def test_missingToken(self) -> None:
        factory = self.makeFactory(config=HeartbeatConfig(interval=2, timeout=5, token=b"k3y"))
        client, _, _ = self.connect(factory)
        self.assertEqual(client.closed[0].code, CloseCode.AUTH_FAILED)


class ShutdownTests(ServerTestCase):
    def test_goingAwayWithSpreadHintsThenDone(self) -> None:
        draws = iter([0.1, 0.5, 0.9])
        factory = self.makeFactory(random=lambda: next(draws))
        clients = [self.connect(factory, f"c{i}")[0] for i in range(3)]
        done = factory.shutdown(timeout=5.0, spread=10.0)
        for pair in self.pairs:
            pair.pump()
        self.successResultOf(done)
        hints = [c.closed[0].retryAfter for c in clients]
        self.assertEqual(sorted(hints), [1.0, 5.0, 9.0])  # one draw each, spread
        self.assertTrue(all(c.closed[0].code == CloseCode.GOING_AWAY for c in clients))
        self.assertEqual(factory.counts[DisconnectReason.SHUTDOWN], 3)

    def test_lingerersAbortedAtTheTimeout(self) -> None:
        factory = self.makeFactory()
        _, server, pair = self.connect(factory, "deaf")
        done = factory.shutdown(timeout=2.0)
        self.assertNoResult(done)  # nothing pumped: the client never answers
        self.clock.advance(2.0)
        self.assertTrue(pair.serverTransport.disconnected)
        pair.pump()
        self.successResultOf(done)
        self.successResultOf(factory.shutdown())  # idempotent

    def test_newConnectionsRefusedDuringShutdown(self) -> None:
        factory = self.makeFactory()
        _, _, pair = self.connect(factory)
        factory.shutdown(timeout=2.0)
        late, _, _ = self.connect(factory)
        self.assertEqual(late.closed[0].code, CloseCode.GOING_AWAY)
        pair.pump()

    def test_emptyServerShutsDownAtOnce(self) -> None:
        self.successResultOf(self.makeFactory().shutdown())


class MemoryPairFactoryTests(ClockTestCase):
    def test_fromFactoriesRegistersTheConnection(self) -> None:
        from twisted.internet.protocol import ClientFactory

        server = KeepaliveServerFactory(SERVER, clock=self.clock)
        client = ClientFactory.forProtocol(HeartbeatProtocol)
        client.heartbeatConfig = HeartbeatConfig(interval=1.0, timeout=3.0, clientId="c1")
        client.clock = self.clock
        pair = MemoryPair.fromFactories(client, server, self.clock)
        self.assertIsNotNone(server.get("c1"))
        self.assertEqual(server.established, 1)
        pair.client.sendMessage(b"x")
        pair.clientTransport.loseConnection()
        pair.pump()
        self.assertIsNone(server.get("c1"))
        server.idleSweeper.stop()


class CollectorTests(ClockTestCase):
    def test_applicationRegistersTheCollector(self) -> None:
        from prometheus_client import CollectorRegistry, generate_latest

        from twisted_keepalive.metrics import StatusCollector
        from twisted_keepalive.status import serverStatus

        server = KeepaliveServerFactory(SERVER, clock=self.clock)
        registry = CollectorRegistry()  # the application's own
        registry.register(StatusCollector(lambda: serverStatus(server)))
        client = HeartbeatProtocol(
            HeartbeatConfig(interval=1.0, timeout=3.0), role=Role.CLIENT, clock=self.clock
        )
        pair = MemoryPair(client, server.buildProtocol(None), self.clock).connect()
        text = generate_latest(registry).decode()
        self.assertIn("keepalive_server_connections 1.0", text)
        self.assertIn("keepalive_server_memory_budget_bytes 2.68435456e+08", text)
        pair.clientTransport.loseConnection()
        pair.pump()
        server.idleSweeper.stop()
