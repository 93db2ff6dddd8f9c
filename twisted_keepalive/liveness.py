"""
When to ping and when the peer is dead: pure arithmetic on timestamps.

The data path only stores timestamps here (two attribute writes); the single
timer of a connection asks L{Liveness.check} what is due when it fires, then
sleeps until L{Liveness.nextCheck}.  That is the lazy scheme of Netty's
C{IdleStateHandler} and libhv: no timer is touched per read or write.
"""

from __future__ import annotations

from enum import Enum

#: Timers fire at C{now + (deadline - now)}, which float rounding can put a
#: hair before C{deadline}; anything this close counts as due.
EPSILON = 1e-9


class Verdict(Enum):
    IDLE = "idle"  # nothing to do now
    PING = "ping"  # send a PING, then call pingSent
    DEAD = "dead"  # inbound silence reached the timeout


class Liveness:
    """
    The timestamps of one connection and the rules applied to them.

    A ping is due when we have written nothing for C{interval} (so the peer
    and every NAT on the path keep hearing from us) or when we have heard
    nothing for C{interval} and have not pinged in that time (so a peer that
    only listens still proves it is alive).  Either way at most one PING per
    C{interval}.  The peer is dead once nothing at all has arrived for
    C{timeout}.

    @ivar interval: seconds, or L{None} to never ping (a server answering
        its clients' pings).
    @ivar timeout: seconds, or L{None} to never declare the peer dead.
    @ivar probeSilence: whether inbound silence alone makes a ping due; off
        for a one-way heartbeat to a peer that never answers.
    @ivar requirePongs: only PONGs prove the peer alive: a PING every
        C{interval} whatever else flows, and the peer is dead C{timeout}
        after C{lastPong} (the shell sets it as PONGs arrive).
    """

    __slots__ = (
        "interval",
        "lastPing",
        "lastPong",
        "lastReceived",
        "lastSent",
        "probeSilence",
        "requirePongs",
        "timeout",
    )

    def __init__(
        self,
        interval: float | None,
        timeout: float | None,
        now: float,
        probeSilence: bool = True,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.probeSilence = probeSilence
        self.lastReceived = now
        self.lastSent = now
        self.lastPing = now
        self.lastPong = now
        self.requirePongs = False

    def silence(self, now: float) -> float:
        return now - (self.lastPong if self.requirePongs else self.lastReceived)

    def _pingDue(self) -> float | None:
        if self.interval is None:
            return None
        if self.requirePongs:
            return self.lastPing + self.interval
        if not self.probeSilence:
            return self.lastSent + self.interval
        heard = self.lastReceived if self.lastReceived > self.lastPing else self.lastPing
        return min(self.lastSent, heard) + self.interval

    def _deadAt(self) -> float | None:
        if self.timeout is None:
            return None
        return (self.lastPong if self.requirePongs else self.lastReceived) + self.timeout

    def check(self, now: float) -> Verdict:
        """
        What is due at C{now}.
        """
        deadAt = self._deadAt()
        if deadAt is not None and now >= deadAt - EPSILON:
            return Verdict.DEAD
        pingAt = self._pingDue()
        if pingAt is not None and now >= pingAt - EPSILON:
            return Verdict.PING
        return Verdict.IDLE

    def pingSent(self, now: float) -> None:
        self.lastPing = now
        self.lastSent = now

    def nextCheck(self) -> float | None:
        """
        The earliest time anything can become due, or L{None} for never.
        """
        deadAt = self._deadAt()
        pingAt = self._pingDue()
        if deadAt is None:
            return pingAt
        if pingAt is None:
            return deadAt
        return min(deadAt, pingAt)
