"""
KeepaliveClientFactory on a fake clock: backoff, stable reset, connect
timeout, failover, CLOSE hints, whenConnected, state, stopTrying, queue.
"""

from __future__ import annotations

import itertools
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, ReconnectingClientFactory, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_keepalive import CloseCode, HeartbeatConfig, HeartbeatTimeout, Role
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import (
    ClientState,
    GaveUp,
    KeepaliveClientFactory,
    Overflow,
    QueueFull,
    ServerList,
)
from twisted_keepalive.server import KeepaliveServerFactory
from twisted_keepalive.testing import MemoryPair

from .helpers import ClockTestCase, Recorder

CLIENT = HeartbeatConfig(interval=1.0, timeout=3.0)
SERVER = HeartbeatConfig(interval=5.0, timeout=10.0)


@implementer(IStreamClientEndpoint)
class FakeServer:
    """
    An IStreamClientEndpoint whose answer the test chooses: accept (joined
    in memory to a real server protocol), refuse, or hang.
    """

    def __init__(self, clock: Clock, name: str, mode: str = "accept") -> None:
        self.clock = clock
        self.name = name
        self.mode = mode
        self.attempts: list[float] = []
        self.pairs: list[MemoryPair] = []
        self.servers: list[Recorder] = []
        self.muted: list[tuple[Any, StringTransport]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts.append(self.clock.seconds())
        if self.mode == "refuse":
            return fail(ConnectionRefusedError(self.name))
        if self.mode == "hang":
            return Deferred(lambda d: None)
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        if self.mode == "mute":  # TCP accepted (a frozen server's kernel does that), no HELLO
            transport = StringTransport()
            client.makeConnection(transport)
            self.muted.append((client, transport))
            return succeed(client)
        server: Any = Recorder(SERVER, role=Role.SERVER, clock=self.clock)
        if self.mode == "full":  # refuses at HELLO with CLOSE TOO_MANY_CONNECTIONS
            full = KeepaliveServerFactory(SERVER, maxConnections=0, clock=self.clock)
            server = full.buildProtocol(None)
        self.servers.append(server)
        self.pairs.append(MemoryPair(client, server, self.clock).connect())
        if self.mode == "elsewhere":  # a hostile server: "go elsewhere now", every time
            server.close(CloseCode.GOING_AWAY, "go elsewhere", retryAfter=0.0)
            self.pairs[-1].pump()
        return succeed(client)

    def drop(self) -> None:
        """
        The server closes the live connection.
        """
        pair = self.pairs[-1]
        pair.serverTransport.loseConnection()
        pair.pump()

    def kill(self) -> None:
        """
        The server process dies: the connection is reset and new ones refused.
        """
        self.mode = "refuse"
        if self.pairs and not self.pairs[-1].closed:
            self.pairs[-1].serverTransport.abortConnection()
            self.pairs[-1].pump()


class FactoryTestCase(ClockTestCase):
    def server(self, name: str, mode: str = "accept") -> FakeServer:
        server = FakeServer(self.clock, name, mode)
        if not hasattr(self, "fakes"):
            self.fakes: list[FakeServer] = []
            self.addCleanup(self.closeAll)
        self.fakes.append(server)
        return server

    def advance(self, seconds: float, step: float = 0.125) -> None:
        """
        Let time pass, carrying bytes across every in-memory connection.
        """
        while seconds > 1e-12:
            delta = min(step, seconds)
            self.clock.advance(delta)
            seconds -= delta
            for fake in getattr(self, "fakes", []):
                for pair in fake.pairs:
                    pair.pump()

    def closeAll(self) -> None:
        for factory in getattr(self, "factories", []):
            factory.stopTrying()
        for fake in self.fakes:
            for pair in fake.pairs:
                pair.pump()

    def makeFactory(self, *servers: FakeServer, **kwargs: Any) -> KeepaliveClientFactory:
        kwargs.setdefault(
            "retryPolicy", jitteredBackoff(initialDelay=1.0, maxDelay=8.0, jitter="none")
        )
        kwargs.setdefault("stableAfter", 5.0)
        factory = KeepaliveClientFactory(
            CLIENT, servers=list(servers), clock=self.clock, reactor=self.clock, **kwargs
        )
        self.states: list[str] = []
        factory.addStateObserver(lambda old, new: self.states.append(new.value))
        if not hasattr(self, "factories"):
            self.factories: list[KeepaliveClientFactory] = []
        self.factories.append(factory)
        return factory

    def delays(self, factory: KeepaliveClientFactory) -> list[float]:
        return [
            c.getTime() - self.clock.seconds()
            for c in self.clock.getDelayedCalls()
            if c.active() and getattr(c.func, "__name__", "") == "retry"
        ]


class BackoffTests(FactoryTestCase):
    def test_flappingServerBacksOffNeverLoopsTightly(self) -> None:
        a = self.server("a")
        factory = self.makeFactory(a)
        factory.connect()
        waits = []
        for _ in range(5):
            self.assertIs(factory.state, ClientState.CONNECTED)
            a.drop()  # accepted, handshake done, dropped at once
            waits.append(factory.lastDelay)
            self.advance(factory.lastDelay or 0.0)
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0, 8.0])
        self.assertEqual(len(a.attempts), 6)
        self.assertEqual(factory.reconnects, 5)

    def test_resetOnlyAfterStable(self) -> None:
        a = self.server("a")
        factory = self.makeFactory(a)
        factory.connect()
        a.drop()
        self.advance(1.0)
        a.drop()
        self.assertEqual(factory.failures, 2)
        self.advance(2.0)
        self.advance(4.999)  # up, but not yet stable
        self.assertEqual(factory.failures, 2)
        self.advance(0.001)
        self.assertEqual(factory.failures, 0)
        a.drop()
        self.assertEqual(factory.lastDelay, 1.0)  # back to the initial delay

    def test_heartbeatTimeoutCountsAsFailure(self) -> None:
        a = self.server("a")
        factory = self.makeFactory(a)
        factory.connect()
        a.pairs[-1].serverToClient = False  # the server freezes
        self.advance(3.0)
        self.assertEqual(factory.heartbeatTimeouts, 1)
        self.assertIsInstance(factory.connected, type(None))
        self.assertIs(factory.state, ClientState.WAITING)
        self.assertEqual(factory.lastDelay, 1.0)
        self.assertEqual(self.states[:3], ["connecting", "connected", "waiting"])

    def test_maxRetriesGivesUpAndSaysSo(self) -> None:
        a = self.server("a", mode="refuse")
        factory = self.makeFactory(a, maxRetries=2)
        waiter = factory.whenConnected()
        factory.connect()
        self.advance(1.0 + 2.0)
        self.assertEqual(len(a.attempts), 3)
        self.assertIs(factory.state, ClientState.STOPPED)
        self.assertIsInstance(self.failureResultOf(waiter).value, GaveUp)
        self.advance(100.0)
        self.assertEqual(len(a.attempts), 3)

    def test_connectTimeout(self) -> None:
        a = self.server("a", mode="hang")
        factory = self.makeFactory(a, connectTimeout=2.0)
        factory.connect()
        self.advance(1.875)
        self.assertIs(factory.state, ClientState.CONNECTING)
        self.advance(0.125)
        self.assertIs(factory.state, ClientState.WAITING)
        self.assertEqual(factory.failures, 1)
        self.advance(1.0)
        self.assertEqual(a.attempts, [0.0, 3.0])

    def test_subclassSettingsTakeEffectAtOnce(self) -> None:
        # twisted#5103: the stock class ignores a subclass's initialDelay
        # until the first resetDelay().
        class Slow(KeepaliveClientFactory):
            initialDelay = 7.0
            jitter = "none"

        a = self.server("a", mode="refuse")
        factory = Slow(CLIENT, servers=[a], clock=self.clock, reactor=self.clock)
        factory.connect()
        self.assertEqual(factory.lastDelay, 7.0)
        factory.maxDelay = 7.0
        self.advance(7.0)
        self.assertEqual(factory.lastDelay, 7.0)
        factory.stopTrying()

    def test_defaultPolicyIsJitteredWithinBounds(self) -> None:
        a = self.server("a", mode="refuse")
        factory = KeepaliveClientFactory(
            CLIENT, servers=[a], clock=self.clock, reactor=self.clock, random=lambda: 0.5
        )
        factory.connect()
        self.assertEqual(factory.lastDelay, 0.5)  # full jitter of the 1 s initial delay
        factory.stopTrying()


class FailoverTests(FactoryTestCase):
    def test_killedServerFailsOverWithinOnePass(self) -> None:
        a, b = self.server("a"), self.server("b")
        factory = self.makeFactory(a, b)
        factory.connect()
        self.assertEqual(factory.currentServer, repr(a))
        self.advance(6.0)  # stable on A
        a.kill()
        self.advance(0.125)  # next server of the pass: at once
        self.assertIs(factory.state, ClientState.WAITING)
        self.advance(1.0)
        self.assertIs(factory.state, ClientState.CONNECTED)
        self.assertEqual(factory.currentServer, repr(b))
        # A refused, B accepted: one attempt each after the kill.
        self.assertEqual((len(a.attempts), len(b.attempts)), (2, 1))

    def test_connectTimeoutCoversTheHandshake(self) -> None:
        a, b = self.server("a", mode="mute"), self.server("b")
        factory = self.makeFactory(a, b, connectTimeout=2.0)
        factory.connect()
        ((client, transport),) = a.muted
        self.advance(1.875)
        self.assertIs(factory.state, ClientState.CONNECTING)
        self.advance(0.125)
        self.assertTrue(transport.disconnected)  # aborted at the connect timeout
        client.connectionLost(Failure(ConnectionDone()))
        # A failed attempt, not a lost connection: B at once, in the same pass.
        self.assertEqual(factory.currentServer, repr(b))
        self.assertIs(factory.state, ClientState.CONNECTED)
        self.assertIn("no connection within 2s", factory.lastError or "")
        self.assertEqual(b.attempts, [2.0])

    def test_serverFullAtHelloTriesNextAtOnce(self) -> None:
        a, b = self.server("a", mode="full"), self.server("b")
        factory = self.makeFactory(a, b)
        factory.connect()
        self.assertEqual(factory.currentServer, repr(b))
        self.assertIs(factory.state, ClientState.CONNECTED)
        self.assertEqual(factory.failures, 0)
        self.assertIn("TOO_MANY_CONNECTIONS", factory.lastError or "")

    def test_refusedPrimaryTriesNextAtOnce(self) -> None:
        a, b = self.server("a", mode="refuse"), self.server("b")
        factory = self.makeFactory(a, b)
        factory.connect()
        self.clock.advance(0)
        self.assertEqual(factory.currentServer, repr(b))
        self.assertEqual((a.attempts, b.attempts), ([0.0], [0.0]))

    def test_wholePassFailsThenBackoff(self) -> None:
        a, b = self.server("a", "refuse"), self.server("b", "refuse")
        factory = self.makeFactory(a, b)
        factory.connect()
        self.advance(1.0 + 2.0)
        self.assertEqual(a.attempts, [0.0, 1.0, 3.0])
        self.assertEqual(b.attempts, [0.0, 1.0, 3.0])

    def test_roundRobinStartsAfterTheLastServer(self) -> None:
        a, b = self.server("a"), self.server("b")
        factory = self.makeFactory(a, b, failover="round-robin")
        factory.connect()
        self.advance(6.0)
        a.drop()  # stable connection lost: next pass begins with B
        self.advance(1.0)
        self.assertEqual(factory.currentServer, repr(b))
        order = self.makeFactory(self.server("c"), self.server("d"))
        self.assertEqual(order.failover, "order")

    def test_serverList(self) -> None:
        reactor = MemoryReactorClock()
        servers = ServerList(
            reactor,
            ["127.0.0.1:9000", "[::1]:9001", ("localhost", 9002), "tcp:host=127.0.0.1:port=9003"],
            5.0,
        )
        self.assertEqual(
            [label for label, _ in servers.entries],
            ["127.0.0.1:9000", "[::1]:9001", "localhost:9002", "tcp:host=127.0.0.1:port=9003"],
        )
        # Addresses skip name resolution (no thread-pool hop per attempt).
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
        )

        kinds = [type(endpoint) for _, endpoint in servers.entries[:3]]
        self.assertEqual(kinds, [TCP4ClientEndpoint, TCP6ClientEndpoint, HostnameEndpoint])
        for _, endpoint in servers.entries[:3]:
            endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual([c[0] for c in reactor.tcpClients[:2]], ["127.0.0.1", "::1"])
        self.assertEqual([c[3] for c in reactor.tcpClients[:2]], [5.0, 5.0])  # connect timeout
        for bad in ("localhost", "host:port", "h:70000", 42):
            self.assertRaises(ValueError, ServerList, reactor, [bad], 5.0)
        self.assertRaises(ValueError, ServerList, reactor, [], 5.0)


class CloseHintTests(FactoryTestCase):
    def test_retryAfterHonoured(self) -> None:
        a = self.server("a")
        factory = self.makeFactory(a)
        factory.connect()
        self.advance(6.0)
        a.servers[-1].close(CloseCode.GOING_AWAY, "maintenance", retryAfter=30.0)
        a.pairs[-1].pump()
        self.assertEqual(factory.lastDelay, 30.0)
        self.advance(29.875)
        self.assertEqual(len(a.attempts), 1)
        self.advance(0.125)
        self.assertEqual(len(a.attempts), 2)

    def test_zeroHintGoesElsewhereNow(self) -> None:
        a, b = self.server("a"), self.server("b")
        factory = self.makeFactory(a, b)
        factory.connect()
        a.servers[-1].close(CloseCode.GOING_AWAY, "move", retryAfter=0.0)
        a.pairs[-1].pump()
        self.clock.advance(0)
        self.assertEqual(factory.currentServer, repr(b))

    def test_zeroHintObeyedOnceInARow(self) -> None:
        # Two servers that both say "go elsewhere now" at every connection:
        # before, 14,577 connects in 10 s and a failure count of 0.
        a, b = self.server("a", "elsewhere"), self.server("b", "elsewhere")
        factory = self.makeFactory(a, b)
        factory.connect()
        self.advance(10.0)
        attempts = sorted(a.attempts + b.attempts)
        # Backoff 1, 2, 4, 8 s (no jitter), one immediate jump after each.
        self.assertLessEqual(len(attempts), 10)
        self.assertGreaterEqual(factory.failures, 4)
        immediate = sum(1 for x, y in itertools.pairwise(attempts) if y == x)
        self.assertLessEqual(immediate, len(attempts) // 2)
        # Never two immediate reconnections in a row.
        for x, y, z in zip(attempts, attempts[1:], attempts[2:], strict=False):
            self.assertFalse(x == y == z, attempts)

    def test_zeroHintAgainAfterAStableConnection(self) -> None:
        a, b = self.server("a"), self.server("b")
        factory = self.makeFactory(a, b)
        factory.connect()
        for _ in range(3):
            self.advance(6.0)  # stable (5 s): the next 0 hint is obeyed at once
            live = [
                (server, pair)
                for fake in (a, b)
                for server, pair in zip(fake.servers, fake.pairs, strict=True)
                if not pair.closed
            ]
            self.assertEqual(len(live), 1)
            server, pair = live[0]
            server.close(CloseCode.GOING_AWAY, "move", retryAfter=0.0)
            pair.pump()
            self.clock.advance(0)
            self.assertEqual(factory.state.value, "connected")
        self.assertEqual(len(a.attempts) + len(b.attempts), 4)


class APITests(FactoryTestCase):
    def test_whenConnected(self) -> None:
        a = self.server("a")
        factory = self.makeFactory(a)
        d = factory.whenConnected()
        self.assertNoResult(d)
        factory.connect()
        self.assertIs(self.successResultOf(d), factory.connected)
        self.assertIs(self.successResultOf(factory.whenConnected()), factory.connected)

    def test_whenConnectedFailAfterFailures(self) -> None:
        a = self.server("a", mode="refuse")
        factory = self.makeFactory(a)
        d = factory.whenConnected(failAfterFailures=2)
        factory.connect()
        self.assertNoResult(d)
        self.advance(1.0)
        self.assertIsInstance(self.failureResultOf(d).value, GaveUp)
        self.assertIs(factory.state, ClientState.WAITING)  # it keeps trying

    def test_callbackMayStopTheFactory(self) -> None:
        # A whenConnected errback that calls stopTrying() runs after the
        # factory finished its own transition: no retry survives it.
        a = self.server("a", mode="refuse")
        factory = self.makeFactory(a)
        factory.whenConnected(failAfterFailures=1).addErrback(lambda f: factory.stopTrying())
        factory.addStateObserver(lambda old, new: None)
        factory.connect()
        self.assertIs(factory.state, ClientState.STOPPED)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_observerMayStopTheFactory(self) -> None:
        a = self.server("a", mode="refuse")
        factory = self.makeFactory(a)

        def stopWhenWaiting(old: ClientState, new: ClientState) -> None:
            if new is ClientState.WAITING:
                factory.stopTrying()

        factory.addStateObserver(stopWhenWaiting)
        factory.connect()
        self.assertIs(factory.state, ClientState.STOPPED)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_stopTryingInEveryState(self) -> None:
        for mode, settle in (("hang", 0.5), ("refuse", 0.0), ("accept", 0.0)):
            server = self.server(mode, mode=mode)
            factory = self.makeFactory(server)
            waiter = factory.whenConnected() if mode != "accept" else None
            factory.connect()
            self.advance(settle) if settle else None
            expected = {"hang": "connecting", "refuse": "waiting", "accept": "connected"}[mode]
            self.assertEqual(factory.state.value, expected)
            factory.stopTrying()
            if mode == "accept":
                server.pairs[-1].pump()
                self.assertEqual(server.servers[-1].closed[0].code, CloseCode.NORMAL)
            if waiter is not None:
                self.failureResultOf(waiter, CancelledError)
            self.assertIs(factory.state, ClientState.STOPPED)
            self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
            self.failureResultOf(factory.whenConnected(), CancelledError)

    def test_queueWhileDisconnectedFlushedInOrder(self) -> None:
        a = self.server("a", mode="refuse")
        factory = self.makeFactory(a)
        factory.connect()
        for i in range(5):
            factory.sendMessage(b"m%d" % i)
        self.assertEqual(len(factory.queue), 5)
        a.mode = "accept"
        self.advance(1.0)
        factory.sendMessage(b"live")
        a.pairs[-1].pump()
        self.assertEqual(a.servers[-1].messages, [b"m0", b"m1", b"m2", b"m3", b"m4", b"live"])
        self.assertEqual(len(factory.queue), 0)

    def test_overflowPolicies(self) -> None:
        for overflow, kept in (
            (Overflow.DROP_OLDEST, [b"1", b"2"]),
            (Overflow.DROP_NEWEST, [b"0", b"1"]),
        ):
            factory = KeepaliveClientFactory(
                CLIENT, queueSize=2, overflow=overflow, clock=self.clock
            )
            for i in range(3):
                factory.sendMessage(b"%d" % i)
            self.assertEqual(list(factory.queue), kept)
            self.assertEqual(factory.dropped, 1)
        factory = KeepaliveClientFactory(CLIENT, queueSize=1, clock=self.clock)
        factory.sendMessage(b"a")
        with self.assertRaises(QueueFull) as ctx:
            factory.sendMessage(b"b")
        self.assertIn("full (1 messages)", str(ctx.exception))
        self.assertEqual(list(factory.queue), [b"a"])

    def test_badArguments(self) -> None:
        for kwargs in (
            {"failover": "random"},
            {"connectTimeout": 0},
            {"maxRetries": -1},
            {"queueSize": -1},
            {"stableAfter": -1},
        ):
            self.assertRaises(ValueError, KeepaliveClientFactory, CLIENT, **kwargs)


class ConnectorModeTests(ClockTestCase):
    """
    reactor.connectTCP(host, port, factory), as with the stock class.
    """

    def test_dropIn(self) -> None:
        reactor = MemoryReactorClock()
        factory = KeepaliveClientFactory(
            CLIENT, clock=reactor, retryPolicy=jitteredBackoff(jitter="none"), stableAfter=5.0
        )
        self.assertIsInstance(factory, ReconnectingClientFactory)
        connector = reactor.connectTCP("127.0.0.1", 9000, factory)
        reconnects: list[float] = []
        connector.connect = lambda: reconnects.append(reactor.seconds())
        self.assertEqual(factory.currentServer, "127.0.0.1:9000")
        self.assertIs(factory.state, ClientState.CONNECTING)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        server = Recorder(SERVER, role=Role.SERVER, clock=reactor)
        server.makeConnection(StringTransport())
        server.dataReceived(transport.value())
        protocol.dataReceived(server.transport.value())
        self.assertIs(factory.state, ClientState.CONNECTED)
        # The server dies at once: the connector reports the loss, we retry after 1 s.
        protocol.connectionLost(Failure(ConnectionDone()))
        factory.clientConnectionLost(connector, Failure(ConnectionDone()))
        self.assertEqual(factory.lastDelay, 1.0)
        reactor.advance(1.0)
        self.assertEqual(reconnects, [1.0])
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(factory.lastDelay, 2.0)
        factory.stopTrying()
        self.assertTrue(connector.stoppedConnecting)
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()], [])

    def test_connectTimeoutFailsTheAttempt(self) -> None:
        reactor = MemoryReactorClock()
        factory = KeepaliveClientFactory(
            CLIENT, clock=reactor, connectTimeout=3.0, retryPolicy=jitteredBackoff(jitter="none")
        )
        connector = reactor.connectTCP("127.0.0.1", 9000, factory)
        reactor.advance(3.0)
        self.assertTrue(connector.stoppedConnecting)
        factory.stopTrying()

    def test_heartbeatTimeoutReasonSeenByFactory(self) -> None:
        reactor = MemoryReactorClock()
        factory = KeepaliveClientFactory(CLIENT, clock=reactor)
        reactor.connectTCP("127.0.0.1", 9000, factory)
        protocol = factory.buildProtocol(None)
        server = Recorder(SERVER, role=Role.SERVER, clock=reactor)
        pair = MemoryPair(protocol, server, reactor).connect()
        pair.serverToClient = False
        pair.advance(3.0, 0.5)
        self.assertEqual(factory.heartbeatTimeouts, 1)
        self.assertIsInstance(protocol.closeReason.value, HeartbeatTimeout)
        factory.stopTrying()


class TwistedHabitsTests(FactoryTestCase):
    """
    Ordinary Twisted code must not turn reconnection off.
    """

    def test_subclassForgettingSuperStillReconnects(self) -> None:
        from twisted_keepalive import HeartbeatProtocol

        events: list[str] = []

        class Forgetful(HeartbeatProtocol):
            def connectionMade(self) -> None:
                events.append("made")  # no super()

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                events.append("lost")  # no super()

        from twisted.logger import ILogObserver, globalLogPublisher

        logged: list[dict[str, Any]] = []
        observer = cast(ILogObserver, logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        a = self.server("a")
        factory = self.makeFactory(a)
        factory.protocol = Forgetful
        factory.connect()
        self.assertEqual(factory.state.value, "connected")  # the heartbeat was started anyway
        a.drop()
        self.assertEqual(factory.state.value, "waiting")  # the loss was heard
        self.advance(1.0)
        self.assertEqual(factory.state.value, "connected")
        self.assertEqual(len(a.attempts), 2)
        self.assertEqual(events, ["made", "lost", "made"])
        said = [e for e in logged if "does not call HeartbeatProtocol" in str(e.get("log_format"))]
        self.assertEqual({e["method"] for e in said}, {"connectionMade", "connectionLost"})

    def test_whenConnectedNeverGivesAClosingProtocol(self) -> None:
        a = self.server("a")
        factory = self.makeFactory(a)
        factory.connect()
        first = self.successResultOf(factory.whenConnected())
        server = a.servers[-1]
        # The server's CLOSE is read; the connection is not lost yet.
        server.close(CloseCode.GOING_AWAY, "bye", retryAfter=1.0)
        pair = a.pairs[-1]
        first.dataReceived(pair.serverTransport.value())
        pair.serverTransport.clear()
        self.assertFalse(first.isOpen)
        waiting = factory.whenConnected()
        self.assertNoResult(waiting)
        pair.pump()
        self.advance(1.5)
        second = self.successResultOf(waiting)
        self.assertIsNot(second, first)
        self.assertTrue(second.isOpen)

    def test_whenReadyForClientService(self) -> None:
        from twisted_keepalive import HeartbeatProtocol

        a = self.server("a")
        factory = self.makeFactory(a)
        factory.connect()
        protocol = self.successResultOf(factory.whenConnected())
        self.assertIs(self.successResultOf(protocol.whenReady()), protocol)
        fresh = HeartbeatProtocol(CLIENT, role=Role.CLIENT, clock=self.clock)
        fresh.makeConnection(StringTransport())
        ready = fresh.whenReady()
        self.assertNoResult(ready)
        fresh.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(ready, ConnectionDone)
