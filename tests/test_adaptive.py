"""
The adaptive interval on a fake clock: the learner's arithmetic, then a
client factory learning a 30 s NAT (FakeNetwork's NAT mode) from a 5 s
base interval, its heartbeat rate after learning, and its detection bound.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive import HeartbeatConfig
from twisted_keepalive.adaptive import AdaptiveInterval
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import ClientState, KeepaliveClientFactory
from twisted_keepalive.server import KeepaliveServerFactory
from twisted_keepalive.testing import FakeNetwork


class LearnerTests(SynchronousTestCase):
    def test_climbsUntilThePathDiesThenSettlesInsideIt(self) -> None:
        a = AdaptiveInterval(5.0, 120.0)
        nat, now, deaths = 30.0, 0.0, 0
        for _ in range(40):
            now += a.current
            if a.current < nat:
                a.survived(a.current, now)
            else:
                a.died(a.current, now)
                deaths += 1
        self.assertFalse(a.learning)
        self.assertLess(a.current, nat)
        # At most 1.3 x the minimum heartbeats (3600 / 30 per hour).
        self.assertLessEqual(3600 / a.current, 1.3 * 3600 / nat)
        self.assertEqual(deaths, 2)  # two probes beyond the NAT's limit, no more
        self.assertAlmostEqual(a.current, 5.0 * 1.5**5 * 0.85 * 0.85, places=6)

    def test_trafficProvesNothing(self) -> None:
        a = AdaptiveInterval(5.0, 120.0, confirm=1)
        self.assertFalse(a.survived(1.0, 10.0))  # data flowed a second ago
        self.assertEqual(a.current, 5.0)
        self.assertTrue(a.survived(4.9, 20.0))  # a hair early still counts
        self.assertEqual(a.current, 7.5)

    def test_aDeathAtTheBaseIntervalIsARealDeath(self) -> None:
        a = AdaptiveInterval(5.0, 120.0)
        self.assertFalse(a.died(5.0 * 0.9, 1.0))
        self.assertFalse(a.died(5.0, 2.0))  # base is "good" from the start: once is a peer
        self.assertIsNone(a.failed)

    def test_twoDeathsAtAKnownGoodIntervalRelearn(self) -> None:
        a = AdaptiveInterval(5.0, 120.0, confirm=1)
        for now in (10.0, 20.0, 30.0):
            a.survived(a.current, now)
        self.assertEqual(a.current, 5.0 * 1.5**3)
        self.assertFalse(a.died(a.good, 40.0))  # once: the peer died
        self.assertTrue(a.died(a.good, 50.0))  # twice: the path changed
        self.assertEqual((a.current, a.good), (5.0, 5.0))

    def test_reprobesWhatFailedOncePerPeriod(self) -> None:
        a = AdaptiveInterval(5.0, 120.0, confirm=1, reprobeAfter=100.0)
        a.survived(5.0, 1.0)  # 7.5
        a.died(7.5, 2.0)  # failed at 7.5: back to 5, ceiling 6.375
        a.survived(5.0, 3.0)
        self.assertEqual(a.current, 6.375)
        a.survived(6.375, 4.0)
        self.assertEqual(a.current, 6.375)  # settled
        self.assertFalse(a.learning)
        a.survived(6.375, 103.0)  # a period later: the failed one, once
        self.assertEqual(a.current, 7.5)
        a.died(7.5, 110.0)  # still too long: one death, back inside
        self.assertEqual((a.current, a.failed, a.deaths), (6.375, 7.5, 2))
        a.survived(6.375, 215.0)
        a.survived(7.5, 223.0)  # the path changed: it survives now, and climbs on
        self.assertIsNone(a.failed)
        a.survived(7.5, 231.0)
        self.assertEqual(a.current, 7.5 * 1.5)

    def test_bounds(self) -> None:
        self.assertRaises(ValueError, AdaptiveInterval, 5.0, 5.0)
        self.assertRaises(ValueError, AdaptiveInterval, 5.0, 10.0, step=1.0)
        self.assertRaises(ValueError, AdaptiveInterval, 5.0, 10.0, margin=1.0)
        a = AdaptiveInterval(5.0, 8.0, confirm=1)
        a.survived(5.0, 1.0)
        self.assertEqual(a.current, 7.5)
        a.survived(7.5, 2.0)
        self.assertEqual(a.current, 8.0)  # never above the maximum
        self.assertEqual(a.deadline(15.0), 8.0 + 10.0)

    def test_configValidation(self) -> None:
        self.assertRaises(ValueError, HeartbeatConfig, interval=5, timeout=15, adaptiveInterval=5)
        self.assertRaises(
            ValueError,
            HeartbeatConfig,
            interval=5,
            timeout=15,
            adaptiveInterval=60,
            requirePongs=True,
        )


class ThroughANatTests(SynchronousTestCase):
    """
    A client (interval 5 s, timeout 15 s, adaptive up to 120 s) behind a
    NAT that forgets flows idle for 30 s, to a server that evicts after
    300 s: on a fake clock, with every reconnection answered at once.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.network = FakeNetwork(self.reactor, natTimeout=30.0)
        self.server = KeepaliveServerFactory(
            HeartbeatConfig(interval=10.0, timeout=300.0), clock=self.reactor
        )
        self.client = KeepaliveClientFactory(
            HeartbeatConfig(interval=5.0, timeout=15.0, adaptiveInterval=120.0),
            servers=["10.0.0.1:9000"],
            retryPolicy=jitteredBackoff(initialDelay=0.5, maxDelay=1.0, jitter="none"),
            reactor=self.reactor,
        )
        self.addCleanup(self.client.stopTrying)

    def live(self, seconds: float) -> None:
        end = self.reactor.seconds() + seconds
        while self.reactor.seconds() < end:
            while self.network.pending:
                self.network.accept(self.server)
            self.network.advance(0.25, step=0.25)

    def protocols(self) -> list[Any]:
        # The endpoint wraps each client protocol.
        return [getattr(p.client, "_wrappedProtocol", p.client) for p in self.network.pairs]

    def pings(self) -> int:
        return sum(p.core.pingsSent for p in self.protocols() if p.core is not None)

    def test_learnsTheNatThenStaysInside(self) -> None:
        self.client.connect()
        adaptive = self.client.adaptive
        assert adaptive is not None
        while adaptive.learning and self.reactor.seconds() < 900.0:
            self.live(10.0)
        self.assertFalse(adaptive.learning)
        learned = adaptive.learnedAt
        assert learned is not None
        self.assertLess(learned, 600.0)  # minutes, not hours
        self.assertLess(adaptive.current, 30.0)
        connections = len(self.network.pairs)
        self.assertEqual(connections, 1 + adaptive.deaths)  # each death cost one reconnection
        self.assertEqual(adaptive.deaths, 2)
        # A 10-minute soak after learning: no death.
        self.live(600.0)
        self.assertEqual(len(self.network.pairs), connections)
        self.assertEqual(self.client.state, ClientState.CONNECTED)
        # Two hours: heartbeats within 1.3 x the minimum, re-probing what
        # failed once an hour (one death each time: the NAT did not change).
        before = self.pings()
        self.live(7200.0)
        perHour = (self.pings() - before) / 2
        self.assertLessEqual(perHour, 1.3 * 3600 / 30)
        self.assertGreaterEqual(perHour, 3600 / 30)
        self.assertEqual(len(self.network.pairs), connections + 2)
        self.assertLess(adaptive.current, 30.0)

    def test_aDeadServerIsStillDetectedWithinTheBound(self) -> None:
        self.client.connect()
        self.live(1200.0)
        pair = self.network.pairs[-1]
        liveness = self.protocols()[-1].core.liveness
        lastHeard, interval = liveness.lastReceived, liveness.interval
        pair.clientToServer = pair.serverToClient = False  # the server vanishes
        while self.client.state is ClientState.CONNECTED:
            self.network.advance(0.25, step=0.25)
        detected = self.reactor.seconds() - lastHeard
        # The documented bound: adaptiveInterval + timeout - interval.
        self.assertLessEqual(detected, 120.0 + 15.0 - 5.0)
        # At the learned interval: that interval and what the timeout leaves.
        self.assertLess(interval, 30.0)
        self.assertLessEqual(detected, interval + 15.0 - 5.0 + 0.25)


class ServerTimeoutCapTests(SynchronousTestCase):
    """
    The interval never reaches the server's eviction timeout: a client
    stays under 80 % of the timeout the server announced, however long
    the path would let it be silent.
    """

    def test_cappedByTheServersTimeout(self) -> None:
        reactor = MemoryReactorClock()
        network = FakeNetwork(reactor)  # no NAT: the path keeps any silence
        server = KeepaliveServerFactory(HeartbeatConfig(interval=1.0, timeout=20.0), clock=reactor)
        client = KeepaliveClientFactory(
            HeartbeatConfig(interval=1.0, timeout=3.0, adaptiveInterval=60.0),
            servers=["10.0.0.1:9000"],
            reactor=reactor,
        )
        self.addCleanup(client.stopTrying)
        client.connect()
        network.accept(server)
        network.advance(600.0, step=0.25)
        protocol = getattr(network.pairs[0].client, "_wrappedProtocol", None)
        assert protocol is not None and protocol.core is not None
        self.assertEqual(protocol.core.liveness.interval, 0.8 * 20.0)
        self.assertEqual(len(network.pairs), 1)  # never evicted, never died
        self.assertEqual(client.state, ClientState.CONNECTED)
        self.assertEqual(server.evictions, 0)
