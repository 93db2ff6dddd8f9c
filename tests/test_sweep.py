"""
IdleSweeper: exact eviction with one shared timer.
"""

from __future__ import annotations

from twisted_keepalive.liveness import Liveness
from twisted_keepalive.sweep import IdleSweeper

from .helpers import ClockTestCase


class SweeperTests(ClockTestCase):
    def test_exactEvictionAndNoTimerForLiveConnections(self) -> None:
        sweeper = IdleSweeper(self.clock, period=1.0)
        dead: list[tuple[str, float]] = []
        lives = {name: Liveness(None, 5.0, 0.0) for name in ("quiet", "chatty")}
        for name, live in lives.items():

            def onDead(key: object, now: float, name: str = name) -> None:
                dead.append((name, now))

            sweeper.add(name, live, onDead)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # just the sweep
        for _ in range(40):
            self.advance(0.25)
            lives["chatty"].lastReceived = self.clock.seconds()
            calls = self.clock.getDelayedCalls()
            if self.clock.seconds() < 4.0:
                self.assertEqual(len(calls), 1)  # live connections arm nothing
        self.assertEqual(dead, [("quiet", 5.0)])
        self.assertEqual(len(sweeper), 1)
        sweeper.stop()
        self.assertFalse(sweeper.running)

    def test_aConnectionThatSpeaksAtTheLastMomentSurvives(self) -> None:
        sweeper = IdleSweeper(self.clock, period=1.0)
        dead: list[float] = []
        live = Liveness(None, 3.0, 0.0)
        sweeper.add("c", live, lambda key, now: dead.append(now))
        self.advance(2.875)
        live.lastReceived = self.clock.seconds()  # the exact timer is armed for 3.0
        self.advance(1.0)
        self.assertEqual(dead, [])
        self.advance(5.0)
        self.assertEqual(dead, [5.875])
        self.assertFalse(sweeper.running)  # the last member gone: no timer left

    def test_removeCancelsEverything(self) -> None:
        sweeper = IdleSweeper(self.clock, period=1.0)
        live = Liveness(None, 0.5, 0.0)  # expires before the first sweep
        sweeper.add("c", live, lambda key, now: None)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        sweeper.remove("c")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noTimeoutIsIgnored(self) -> None:
        sweeper = IdleSweeper(self.clock)
        sweeper.add("c", Liveness(None, None, 0.0), lambda key, now: None)
        self.assertEqual(len(sweeper), 0)
        self.assertRaises(ValueError, IdleSweeper, self.clock, 0)
