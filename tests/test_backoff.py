"""
Retry policies.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.application.internet import ClientService
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_keepalive.backoff import GROWTHS, JITTERS, jitteredBackoff


def fixed(value: float) -> Any:
    return lambda: value


class PolicyTests(SynchronousTestCase):
    def test_firstRetryWaitsTheInitialDelay(self) -> None:
        # Stock ReconnectingClientFactory waits initial x factor (twisted#12478).
        for growth in GROWTHS:
            policy = jitteredBackoff(growth, initialDelay=3.0, maxDelay=100.0, jitter="none")
            self.assertEqual(policy(1), 3.0, growth)
            self.assertEqual(policy(0), 3.0, growth)

    def test_growth(self) -> None:
        exp = jitteredBackoff(
            "exponential", initialDelay=1.0, maxDelay=60.0, factor=2.0, jitter="none"
        )
        self.assertEqual([exp(n) for n in range(1, 9)], [1, 2, 4, 8, 16, 32, 60, 60])
        lin = jitteredBackoff("linear", initialDelay=1.5, maxDelay=5.0, jitter="none")
        self.assertEqual([lin(n) for n in range(1, 6)], [1.5, 3.0, 4.5, 5.0, 5.0])
        self.assertEqual(
            jitteredBackoff("fixed", initialDelay=2.0, maxDelay=9.0, jitter="none")(50), 2.0
        )

    def test_hugeAttemptDoesNotOverflow(self) -> None:
        self.assertEqual(jitteredBackoff(factor=10.0, jitter="none")(10**6), 60.0)

    def test_jitters(self) -> None:
        def at(jitter: str, r: float, attempt: int = 3) -> float:
            return jitteredBackoff(
                "exponential",
                initialDelay=1.0,
                maxDelay=60.0,
                factor=2.0,
                jitter=jitter,
                random=fixed(r),
            )(attempt)

        self.assertEqual(at("full", 0.5), 2.0)
        self.assertEqual(at("full", 0.0), 0.0)
        self.assertEqual(at("equal", 0.5), 3.0)
        self.assertEqual(at("equal", 0.0), 2.0)
        self.assertAlmostEqual(at("proportional", 0.0), 4.0 * 0.8)
        self.assertAlmostEqual(at("proportional", 1.0), 4.0 * 1.2)

    def test_decorrelated(self) -> None:
        policy = jitteredBackoff(
            initialDelay=1.0, maxDelay=10.0, jitter="decorrelated", random=fixed(1.0)
        )
        # Always the top of U(base, 3 x previous): 3, 9, then capped at 10.
        self.assertEqual([policy(n) for n in range(1, 5)], [3.0, 9.0, 10.0, 10.0])
        self.assertEqual(policy(1), 3.0)  # the first attempt starts over

    def test_exactSequencesWithSeededRandom(self) -> None:
        base = [min(1.0 * 2**n, 10.0) for n in range(8)]
        expected = {
            "none": lambda v, r: v,
            "full": lambda v, r: v * r,
            "equal": lambda v, r: v / 2 + v / 2 * r,
            "proportional": lambda v, r: min(v * (1 + 0.2 * (2 * r - 1)), 10.0),
        }
        for jitter, formula in expected.items():
            draws = random.Random(42)
            policy = jitteredBackoff(
                "exponential",
                initialDelay=1.0,
                maxDelay=10.0,
                factor=2.0,
                jitter=jitter,
                random=random.Random(42).random,
            )
            got = [policy(n) for n in range(1, 9)]
            want = [formula(v, draws.random() if jitter != "none" else 0.0) for v in base]
            for g, w in zip(got, want, strict=True):
                self.assertAlmostEqual(g, w, places=12, msg=jitter)
        draws = random.Random(7)
        policy = jitteredBackoff(
            initialDelay=1.0, maxDelay=10.0, jitter="decorrelated", random=random.Random(7).random
        )
        previous = 1.0
        for n in range(1, 9):
            top = min(10.0, 1.0 + draws.random() * (max(1.0, previous * 3) - 1.0))
            self.assertAlmostEqual(policy(n), top, places=12)
            previous = top

    def test_maxHoldsAfterJitter(self) -> None:
        # Stock jitter can exceed maxDelay (twisted#4734).
        for jitter in JITTERS:
            policy = jitteredBackoff(
                initialDelay=5.0, maxDelay=10.0, jitter=jitter, random=fixed(0.999999)
            )
            self.assertLessEqual(max(policy(n) for n in range(20)), 10.0, jitter)

    @given(
        st.sampled_from(GROWTHS),
        st.sampled_from(JITTERS),
        st.floats(0, 10),
        st.floats(0, 100),
        st.floats(1, 5),
        st.floats(0, 0.999999),
        st.integers(0, 2000),
    )
    def test_alwaysWithinBounds(
        self,
        growth: str,
        jitter: str,
        initial: float,
        extra: float,
        factor: float,
        r: float,
        attempt: int,
    ) -> None:
        policy = jitteredBackoff(
            growth,
            initialDelay=initial,
            maxDelay=initial + extra,
            factor=factor,
            jitter=jitter,
            random=fixed(r),
        )
        delay = policy(attempt)
        self.assertTrue(0.0 <= delay <= initial + extra)

    def test_badArguments(self) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"growth": "cubic"}, "unknown backoff 'cubic'"),
            ({"jitter": "wild"}, "unknown jitter 'wild'"),
            ({"initialDelay": -1}, "initial delay"),
            ({"initialDelay": 5, "maxDelay": 1}, "max delay"),
            ({"factor": 0.5}, "factor"),
        ]
        for kwargs, fragment in cases:
            with self.assertRaises(ValueError) as ctx:
                jitteredBackoff(**kwargs)
            self.assertIn(fragment, str(ctx.exception))

    def test_plugsIntoClientService(self) -> None:
        clock = Clock()

        @implementer(IStreamClientEndpoint)
        class Refusing:
            def connect(self, factory: Any) -> Any:
                return fail(ConnectionRefusedError())

        policy = jitteredBackoff(initialDelay=2.5, jitter="none")
        service = ClientService(Refusing(), Factory(), retryPolicy=policy, clock=clock)
        service.startService()
        # ClientService passes 1 for the first retry: it waits the initial delay.
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [2.5])
        clock.advance(2.5)
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [2.5 + 5.0])
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])


class NameTests(SynchronousTestCase):
    def test_notMistakenForTwistedsBackoffPolicy(self) -> None:
        # twisted.application.internet.backoffPolicy(initialDelay, maxDelay, ...)
        with self.assertRaises(TypeError):
            jitteredBackoff(0.5, 30)  # type: ignore[arg-type, call-arg]
        with self.assertRaises(ValueError):
            jitteredBackoff(0.5)  # type: ignore[arg-type]
