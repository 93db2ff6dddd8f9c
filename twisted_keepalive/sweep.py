"""
Dead-peer checks for many connections with one timer.

A server may hold tens of thousands of connections.  Giving each its own
lazy timer costs a reactor timer operation per connection per timeout; one
sweep costs a comparison per connection per period, about nine times less
CPU at 10,000 connections (bench/eviction_timers.py).  A plain sweep
evicts up to one period late, so this one also arms an exact one-shot timer
for each connection whose deadline falls before the next sweep: in practice
only the silent ones, so eviction is exact and the live connections never
touch the reactor's timers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from .liveness import EPSILON, Liveness

#: Called with the member's key and the time it was found dead.  A shared
#: function (not a bound method per member) keeps a large fleet small.
OnDead = Callable[[Any, float], None]


class IdleSweeper:
    """
    Calls C{onDead(now)} for each member whose L{Liveness} has heard nothing
    for its C{timeout}, exactly at that moment.

    @param period: seconds between sweeps.  Any value gives exact eviction;
        shorter periods arm fewer one-shot timers, longer ones sweep less
        often.
    """

    def __init__(self, clock: IReactorTime, period: float = 1.0) -> None:
        if not period > 0:
            raise ValueError(f"sweep period must be positive, not {period!r}")
        self.clock = clock
        self.period = period
        self._members: dict[Hashable, Liveness] = {}
        self._onDead: dict[Hashable, OnDead] = {}
        self._exact: dict[Hashable, IDelayedCall] = {}
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = clock

    def __len__(self) -> int:
        return len(self._members)

    @property
    def running(self) -> bool:
        return bool(self._loop.running)

    def add(self, key: Hashable, liveness: Liveness, onDead: OnDead) -> None:
        if liveness.timeout is None:
            return
        self._members[key] = liveness
        self._onDead[key] = onDead
        self._arm(key, liveness, self.clock.seconds())
        if not self._loop.running:
            self._loop.start(self.period, now=False)

    def remove(self, key: Hashable) -> None:
        self._members.pop(key, None)
        self._onDead.pop(key, None)
        call = self._exact.pop(key, None)
        if call is not None and call.active():
            call.cancel()
        if not self._members and self._loop.running:
            self._loop.stop()

    def stop(self) -> None:
        for key in list(self._members):
            self.remove(key)

    def _arm(self, key: Hashable, liveness: Liveness, now: float) -> None:
        """
        Arm the exact timer if the deadline comes before the next sweep.
        """
        assert liveness.timeout is not None
        deadAt = liveness.lastReceived + liveness.timeout
        if deadAt < now + self.period and key not in self._exact:
            self._exact[key] = self.clock.callLater(max(0.0, deadAt - now), self._check, key)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        horizon = now + self.period
        exact = self._exact
        due = [
            key
            for key, liveness in self._members.items()
            # The hot loop: one addition and one comparison per connection.
            if liveness.lastReceived + liveness.timeout < horizon  # type: ignore[operator]
        ]
        for key in due:
            if key not in exact:
                self._arm(key, self._members[key], now)

    def _check(self, key: Hashable) -> None:
        self._exact.pop(key, None)
        liveness = self._members.get(key)
        if liveness is None:
            return
        onDead = self._onDead[key]
        now = self.clock.seconds()
        assert liveness.timeout is not None
        if now >= liveness.lastReceived + liveness.timeout - EPSILON:
            self.remove(key)
            onDead(key, now)
        else:
            self._arm(key, liveness, now)  # it spoke meanwhile
