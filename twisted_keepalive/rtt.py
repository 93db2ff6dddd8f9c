"""
Round-trip time estimation, as TCP does it (RFC 6298, section 2).
"""

from __future__ import annotations

#: Gain of the smoothed RTT (RFC 6298's alpha).
ALPHA = 1 / 8
#: Gain of the RTT variance (RFC 6298's beta).
BETA = 1 / 4


class RTTEstimator:
    """
    Smoothed RTT and RTT variance from a stream of samples.

    The first sample R sets C{srtt = R} and C{rttvar = R / 2}; each later one
    updates C{rttvar = (1 - beta) * rttvar + beta * |srtt - R|}, then
    C{srtt = (1 - alpha) * srtt + alpha * R}.  All values in seconds;
    L{None} until the first sample.
    """

    __slots__ = ("last", "minimum", "rttvar", "samples", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.last: float | None = None
        self.minimum: float | None = None
        self.samples = 0

    def add(self, rtt: float) -> None:
        """
        Record one measured round trip.
        """
        if rtt < 0:
            raise ValueError(f"negative RTT sample {rtt!r}")
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        self.last = rtt
        self.minimum = rtt if self.minimum is None else min(self.minimum, rtt)
        self.samples += 1
