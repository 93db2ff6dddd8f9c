"""
The pure pieces: RTT estimation, liveness rules, settings validation.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive import HeartbeatConfig, TCPKeepalive
from twisted_keepalive.liveness import Liveness, Verdict
from twisted_keepalive.rtt import RTTEstimator


class RTTEstimatorTests(SynchronousTestCase):
    def test_firstSample(self) -> None:
        r = RTTEstimator()
        self.assertIsNone(r.srtt)
        r.add(0.2)
        self.assertEqual((r.srtt, r.rttvar, r.samples), (0.2, 0.1, 1))

    def test_rfc6298Update(self) -> None:
        r = RTTEstimator()
        for sample in (0.1, 0.3, 0.2):
            r.add(sample)
        srtt, var = 0.1, 0.05
        for sample in (0.3, 0.2):
            var = 0.75 * var + 0.25 * abs(srtt - sample)
            srtt = 0.875 * srtt + 0.125 * sample
        self.assertAlmostEqual(r.srtt, srtt)
        self.assertAlmostEqual(r.rttvar, var)
        self.assertEqual((r.minimum, r.last), (0.1, 0.2))

    def test_negativeRefused(self) -> None:
        self.assertRaises(ValueError, RTTEstimator().add, -0.1)

    @given(st.lists(st.floats(0, 100), min_size=1, max_size=50))
    def test_srttStaysWithinSampleRange(self, samples: list[float]) -> None:
        r = RTTEstimator()
        for s in samples:
            r.add(s)
        assert r.srtt is not None
        self.assertTrue(min(samples) - 1e-9 <= r.srtt <= max(samples) + 1e-9)


class LivenessTests(SynchronousTestCase):
    def test_writerIdle(self) -> None:
        live = Liveness(1.0, 3.0, 0.0)
        live.lastReceived = 0.9  # heard recently, so only the write side is idle
        self.assertIs(live.check(0.99), Verdict.IDLE)
        self.assertIs(live.check(1.0), Verdict.PING)

    def test_deadBeforePing(self) -> None:
        live = Liveness(1.0, 3.0, 0.0)
        self.assertIs(live.check(3.0), Verdict.DEAD)

    def test_nextCheckIsEarliestDeadline(self) -> None:
        live = Liveness(1.0, 3.0, 0.0)
        live.pingSent(5.0)
        live.lastReceived = 4.5
        self.assertEqual(live.nextCheck(), 6.0)
        live.lastReceived = 2.5
        self.assertEqual(live.nextCheck(), 5.5)  # death comes first

    def test_neverWithoutIntervalOrTimeout(self) -> None:
        self.assertIsNone(Liveness(None, None, 0.0).nextCheck())

    def test_oneWayIgnoresSilence(self) -> None:
        live = Liveness(1.0, None, 0.0, probeSilence=False)
        live.lastSent = 10.0
        self.assertIs(live.check(10.5), Verdict.IDLE)
        self.assertEqual(live.nextCheck(), 11.0)


class ConfigTests(SynchronousTestCase):
    def assertBad(self, fragment: str, **kwargs: Any) -> None:
        with self.assertRaises(ValueError) as ctx:
            HeartbeatConfig(**kwargs)
        self.assertIn(fragment, str(ctx.exception))

    def test_messages(self) -> None:
        self.assertBad("interval must be a positive", interval=-1)
        self.assertBad("timeout (5s) must be longer than interval (5s)", interval=5, timeout=5)
        self.assertBad("minInterval", interval=5, timeout=10, minInterval=6)
        self.assertBad("maxFrame", maxFrame=10)
        self.assertBad("token", token=b"")
        self.assertBad("clientId", clientId="x" * 300)

    def test_tcpKeepaliveParse(self) -> None:
        self.assertEqual(TCPKeepalive.parse("30,5,3"), TCPKeepalive(30, 5, 3))
        for bad in ("30,5", "a,b,c", "0,5,3"):
            self.assertRaises(ValueError, TCPKeepalive.parse, bad)
