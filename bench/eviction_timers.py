"""
Idle eviction at scale: lazy per-connection timers, one plain sweep, our
IdleSweeper (one sweep plus exact one-shot timers for the connections about
to expire), and a timer reset on every message (TimeoutMixin's way).

Each strategy runs the same virtual minute on a real Twisted reactor's timer
heap (a SelectReactor that is never run; its clock is virtual), so the
figures are the reactor's real callLater/runUntilCurrent costs without
waiting a minute.  Traffic: every connection receives a message every few
seconds at random; 1 % of the connections go silent and must be evicted.

    python bench/eviction_timers.py [--connections 10000] [--seconds 60]

Prints CPU seconds per strategy (median of --repeat runs), the ratio to the
lazy timers, timer operations, and how late the silent connections were
evicted relative to their exact deadline.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.selectreactor import SelectReactor

from twisted_keepalive.liveness import Liveness
from twisted_keepalive.sweep import IdleSweeper
from twisted_keepalive.timer import IdleTimer

TIMEOUT = 10.0
STEP = 0.05  # virtual seconds between bursts of traffic
MEAN_GAP = 3.0  # mean seconds between messages on a live connection
SWEEP_EVERY = 1.0  # the sweep's period (Swoole's heartbeat_check_interval)


class VirtualReactor(SelectReactor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.calls = 0

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        self.calls += 1
        return super().callLater(delay, f, *a, **kw)


class Conn:
    __slots__ = ("alive", "evictedAt", "live", "timer")

    def __init__(self, now: float) -> None:
        self.live = Liveness(None, TIMEOUT, now)
        self.alive = True
        self.evictedAt: float | None = None
        self.timer: Any = None


def run(strategy: str, connections: int, seconds: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    reactor = VirtualReactor()
    conns = [Conn(0.0) for _ in range(connections)]
    silent = set(rng.sample(range(connections), connections // 100))
    resets = 0

    def evict(c: Conn) -> None:
        c.alive = False
        c.evictedAt = reactor.now

    if strategy == "lazy":
        for c in conns:

            def decide(now: float, c: Conn = c) -> bool:
                if now - c.live.lastReceived >= TIMEOUT - 1e-9:
                    evict(c)
                    return False
                return True

            c.timer = IdleTimer(reactor, c.live, decide)
            c.timer.start()
    elif strategy == "sweeper":
        sweeper = IdleSweeper(reactor, SWEEP_EVERY)
        for c in conns:
            sweeper.add(c, c.live, lambda now, c=c: evict(c))
    elif strategy == "reset":
        for c in conns:
            c.timer = reactor.callLater(TIMEOUT, evict, c)
    else:

        def sweep() -> None:
            now = reactor.now
            for c in conns:
                if c.alive and now - c.live.lastReceived >= TIMEOUT:
                    evict(c)
            reactor.callLater(SWEEP_EVERY, sweep)

        reactor.callLater(SWEEP_EVERY, sweep)

    # Pre-draw the traffic so every strategy sees the same bytes.
    perStep = max(1, round(connections * STEP / MEAN_GAP))
    steps = int(seconds / STEP)
    traffic = [[rng.randrange(connections) for _ in range(perStep)] for _ in range(steps)]
    silentAt = seconds / 4

    started = time.process_time()
    for i in range(steps):
        reactor.now = (i + 1) * STEP
        for index in traffic[i]:
            c = conns[index]
            if not c.alive or (index in silent and reactor.now >= silentAt):
                continue
            c.live.lastReceived = reactor.now  # the whole data-path cost when lazy
            if strategy == "reset":
                c.timer.reset(TIMEOUT)
                resets += 1
        reactor.runUntilCurrent()
    cpu = time.process_time() - started

    lateness = []
    for index in silent:
        c = conns[index]
        if c.evictedAt is not None:
            lateness.append(c.evictedAt - (c.live.lastReceived + TIMEOUT))
    if strategy == "sweeper":
        sweeper.stop()
    for c in conns:
        if c.alive and strategy != "sweep" and c.timer is not None:
            if strategy == "lazy":
                c.timer.stop()
            elif c.timer.active():
                c.timer.cancel()
    return {
        "cpu": cpu,
        "timerOps": reactor.calls + resets,
        "evicted": len(lateness),
        "worstLate": max(lateness) if lateness else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for strategy in ("lazy", "sweep", "sweeper", "reset"):
        runs = [run(strategy, args.connections, args.seconds, seed) for seed in range(args.repeat)]
        results[strategy] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base = results["lazy"]["cpu"]
    print(
        f"{args.connections} connections, {args.seconds:g} virtual s (step {STEP:g} s: the "
        f"resolution of the lateness column), timeout {TIMEOUT:g} s, "
        f"a message every ~{MEAN_GAP:g} s per connection, sweep every {SWEEP_EVERY:g} s"
    )
    print(
        f"{'strategy':8} {'CPU s':>8} {'x lazy':>7} {'timer ops':>10} {'evicted':>8} "
        f"{'worst late s':>12}"
    )
    for name, r in results.items():
        print(
            f"{name:8} {r['cpu']:8.3f} {r['cpu'] / base:7.2f} {int(r['timerOps']):10d} "
            f"{int(r['evicted']):8d} {r['worstLate']:12.3f}"
        )


if __name__ == "__main__":
    main()
