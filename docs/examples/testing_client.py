"""
Test how your client reconnects, exactly and without a socket: a
KeepaliveClientFactory on MemoryReactorClock, the network's answers
chosen by the test.  Runs under trial, under pytest, or as a script.
"""

import unittest

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive import (
    CloseCode,
    HeartbeatConfig,
    KeepaliveClientFactory,
    KeepaliveServerFactory,
    jitteredBackoff,
)
from twisted_keepalive.testing import FakeNetwork


class ReconnectionTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.network = FakeNetwork(self.reactor)
        self.server = KeepaliveServerFactory(HeartbeatConfig(), clock=self.reactor)
        self.client = KeepaliveClientFactory(
            HeartbeatConfig(interval=1.0, timeout=3.0),
            servers=["10.0.0.1:9000", "10.0.0.2:9000"],
            retryPolicy=jitteredBackoff(initialDelay=1.0, maxDelay=8.0, jitter="none"),
            reactor=self.reactor,
        )
        self.addCleanup(self.client.stopTrying)

    def test_failoverThenRetryAfter(self):
        self.client.connect()
        self.assertEqual(self.network.pending, ["10.0.0.1:9000"])
        self.network.refuse()  # the first server is down: the second, at once
        self.assertEqual(self.network.pending, ["10.0.0.2:9000"])
        pair = self.network.accept(self.server)
        self.assertEqual(self.client.state.value, "connected")
        # The server goes away, asking for 5 s: nothing before that.
        pair.server.close(CloseCode.GOING_AWAY, "maintenance", retryAfter=5.0)
        pair.pump()
        self.network.advance(4.9)
        self.assertEqual(self.network.pending, [])
        self.network.advance(0.2)
        self.assertEqual(self.network.pending, ["10.0.0.1:9000"])

    def test_backoffGrowsWhileEverythingIsDown(self):
        self.client.connect()
        waits = []
        for _ in range(4):
            self.network.refuse()
            self.network.refuse()  # a whole pass failed: back off
            waits.append(self.client.lastDelay)
            self.network.advance(self.client.lastDelay)
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0])


if __name__ == "__main__":
    program = unittest.main(argv=["testing_client"], exit=False)
    if not program.result.wasSuccessful():
        raise SystemExit(1)
    print("reconnection tests passed")
