"""
L{AdaptiveInterval}: learn the longest idle gap a path survives, and ping
just inside it ("smart heartbeat", as mobile push systems do).

A NAT or load balancer forgets an idle flow after its own timeout, often
30 s to 5 min; a fixed 10 s interval sends 3 to 30 times more heartbeats
than keeping the flow needs.  The learner raises the interval step by step
while pings sent after that much silence are answered, and when the path
dies after such a silence (the NAT forgot it, or the peer died: it cannot
tell), it comes back to the longest interval that worked and never again
goes within C{margin} of the one that failed, but to re-probe that one
every C{reprobeAfter} seconds (the path may have changed).

Pure arithmetic: no clock, no I/O.  The client (L{KeepaliveClientFactory}
with C{HeartbeatConfig.adaptiveInterval}) feeds it and applies
L{current}; see docs/tuning.md for when to use it and its price (a slower
detection of a dead peer, bounded by C{maximum + timeout - interval}).
"""

from __future__ import annotations

#: A ping counts as a probe of the current interval if the silence before it
#: was at least this fraction of it (timers fire a hair early or late).
PROBE_FRACTION = 0.95


class AdaptiveInterval:
    """
    The interval to ping at, learned from which silences the path survived.

    @ivar base: the configured interval: never below it.
    @ivar maximum: never above it (nor above what the server allows).
    @ivar current: the interval to use now.
    @ivar good: the longest silence a ping survived.
    @ivar failed: the shortest silence after which the path died, or
        L{None}; forgotten after C{reprobeAfter} seconds.
    @ivar learnedAt: when the interval stopped rising (L{None} while it still
        climbs).
    """

    def __init__(
        self,
        base: float,
        maximum: float,
        *,
        step: float = 1.5,
        confirm: int = 2,
        margin: float = 0.85,
        reprobeAfter: float = 3600.0,
    ) -> None:
        if not 0 < base < maximum:
            raise ValueError(f"the adaptive interval needs 0 < base ({base}) < maximum ({maximum})")
        if step <= 1 or confirm < 1 or not 0 < margin < 1:
            raise ValueError("step > 1, confirm >= 1 and 0 < margin < 1")
        self.base = base
        self.maximum = maximum
        self.step = step
        self.confirm = confirm
        self.margin = margin
        self.reprobeAfter = reprobeAfter
        self.current = base
        self.good = base
        self.failed: float | None = None
        self.failedAt: float | None = None
        self.learnedAt: float | None = None
        self.startedAt: float | None = None
        self.successes = 0
        self.deaths = 0
        self.deathsInARow = 0
        self.raises = 0

    def ceiling(self, now: float) -> float:
        """
        The longest interval worth trying now: within C{margin} of the one
        that failed; that one itself once every C{reprobeAfter} seconds (the
        path may have changed: one death per period if it did not).
        """
        if self.failed is None or self.failedAt is None:
            return self.maximum
        if now - self.failedAt >= self.reprobeAfter:
            return min(self.maximum, self.failed)
        return max(self.base, min(self.maximum, self.failed * self.margin))

    def survived(self, idle: float, now: float) -> bool:
        """
        A ping sent after C{idle} seconds in which nothing went either way
        was answered: the path keeps a flow that long.  Returns whether the
        interval changed.
        """
        if self.startedAt is None:
            self.startedAt = now
        if idle < self.current * PROBE_FRACTION:
            return False  # traffic kept the flow busy: it proves nothing
        self.deathsInARow = 0
        if self.failed is not None and idle >= self.failed * PROBE_FRACTION:
            # A re-probe survived what once failed: the path changed.
            self.failed = self.failedAt = None
            self.learnedAt = None
        self.good = max(self.good, min(idle, self.current))
        self.successes += 1
        if self.successes < self.confirm:
            return False
        self.successes = 0
        higher = min(self.current * self.step, self.ceiling(now))
        if higher <= self.current * 1.001:
            if self.learnedAt is None:
                self.learnedAt = now
            return False
        self.current = higher
        self.raises += 1
        return True

    def died(self, idle: float, now: float) -> bool:
        """
        The path went silent after a ping sent after C{idle} seconds of
        silence (the connection was declared dead).  Returns whether that
        taught anything (a ping at the base interval dying is a real death,
        not a NAT).
        """
        if self.startedAt is None:
            self.startedAt = now
        if idle < self.base * PROBE_FRACTION:
            return False  # at the base interval: a real death, nothing to learn
        if idle <= self.good:
            # A silence that worked before: the peer died, once; twice in a
            # row, the path changed (another network, a shorter NAT timer).
            self.deathsInARow += 1
            if self.deathsInARow < 2:
                return False
            self.good = self.base
        self.deathsInARow = 0
        self.deaths += 1
        self.failed = idle if self.failed is None else min(self.failed, idle)
        self.failedAt = now
        self.successes = 0
        self.current = max(self.base, min(self.good, self.ceiling(now)))
        self.learnedAt = None
        return True

    def deadline(self, timeout: float) -> float:
        """
        The silence after which the peer is dead at the current interval: a
        ping, plus the time the configured interval and timeout leave for
        its answer (so the detection bound grows with the interval, by no
        more than the interval's growth).
        """
        return self.current + max(timeout - self.base, 0.0)

    @property
    def learning(self) -> bool:
        return self.learnedAt is None
