"""
L{History}: a server's counters over the last minutes, for the live view's
charts.  One sample per period, a fixed number kept: bounded and cheap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from .heartbeat import maybeGlobalReactor

#: Series the live view draws: each a counter read by a function.
Counters = Callable[[], dict[str, int]]


class History:
    """
    Every C{period} seconds, how much each counter grew (and the gauges'
    values), the last C{length} samples kept.
    """

    def __init__(
        self,
        counters: Counters,
        *,
        period: float = 5.0,
        length: int = 60,
        clock: IReactorTime | None = None,
    ) -> None:
        self.counters = counters
        self.period = period
        self.length = length
        self.clock = clock
        self._last = counters()
        self.samples: dict[str, deque[int]] = {
            name: deque([0] * length, maxlen=length) for name in self._last
        }
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.sample)
        self._loop.clock = maybeGlobalReactor(self.clock)
        self._loop.start(self.period, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sample(self) -> None:
        now = self.counters()
        for name, value in now.items():
            series = self.samples.setdefault(name, deque([0] * self.length, maxlen=self.length))
            if name.startswith("gauge_"):
                series.append(value)
            else:
                series.append(max(0, value - self._last.get(name, 0)))
        self._last = now

    def asJSON(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "series": {name: list(values) for name, values in self.samples.items()},
        }


def serverCounters(factory: Any) -> Counters:
    """
    The live view's series for a L{KeepaliveServerFactory}: clients
    connected, and evictions, reconnects and losses (sessions that expired
    or were evicted, slow consumers dropped) per period.
    """

    def counters() -> dict[str, int]:
        f = factory
        return {
            "evictions": f.evictions,
            "reconnects": f.reconnects,
            "losses": f.sessionsExpired + f.sessionsEvicted + f.slowConsumers,
            "gauge_clients": f.established,
        }

    return counters
