"""
Log lines about what peers do, limited so that no peer can flood the log.

A server logs faults that peers cause (protocol errors, refused or evicted
connections, CLOSE reasons).  An attacker can cause thousands a second;
each line is useful once.  L{PeerLogLimiter} lets one line through per peer
host and kind of fault per period and counts the rest, which the next line
let through reports.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

#: Seconds between two lines of one kind about one peer host.
LOG_PERIOD = 10.0
#: Hosts remembered at most; past it the oldest entries are forgotten
#: (the memory an attacker with many addresses can make us spend).
MAX_KEYS = 4096


class PeerLogLimiter:
    """
    At most one log line per (kind, host) per C{period} seconds.
    """

    def __init__(
        self, clock: IReactorTime, period: float = LOG_PERIOD, maxKeys: int = MAX_KEYS
    ) -> None:
        if not period >= 0:
            raise ValueError(f"log period must be >= 0 seconds, not {period!r}")
        self.clock = clock
        self.period = period
        self.maxKeys = maxKeys
        # (kind, host) -> [time of the last line, lines suppressed since]
        self._last: dict[tuple[str, str], list[float]] = {}
        self.suppressed = 0

    def allow(self, kind: str, host: str) -> int | None:
        """
        L{None} if a line of this kind about this host was let through less
        than C{period} ago (it is counted instead); otherwise how many were
        suppressed since the last one (usually 0), for the line to say.
        """
        now = self.clock.seconds()
        key = (kind, host)
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.period:
            entry[1] += 1
            self.suppressed += 1
            return None
        held = 0 if entry is None else int(entry[1])
        if entry is None and len(self._last) >= self.maxKeys:
            self._prune(now)
        self._last[key] = [now, 0]
        return held

    def _prune(self, now: float) -> None:
        stale = [k for k, (at, _) in self._last.items() if now - at >= self.period]
        for key in stale:
            del self._last[key]
        if len(self._last) >= self.maxKeys:
            # Every entry is recent: many hosts at once.  Forget the oldest
            # half (dicts keep insertion order); at worst they log again.
            for key in list(self._last)[: self.maxKeys // 2]:
                del self._last[key]
