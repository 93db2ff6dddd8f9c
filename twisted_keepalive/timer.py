"""
The one timer of a connection.

It sleeps until the earliest moment anything can be due (a ping, or the
peer's death), asks what is due, acts, and sleeps again for the remainder.
Reads and writes only move timestamps in L{Liveness}, so a busy connection
costs one timer wake-up per interval however many messages flow, and the
reactor's timer heap is never touched on the data path.

We use C{callLater} rather than a C{LoopingCall}: a fixed-rate loop checks
at fixed instants, so a write just after a tick delays the next ping by up
to two intervals, and it wakes every interval even when nothing can be due.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .liveness import Liveness


class IdleTimer:
    """
    Drives a L{Liveness} from a clock.

    @param decide: called with the current time when the timer fires; does
        what is due (send a PING, abort) and returns whether to keep going.
    """

    __slots__ = ("_call", "_clock", "_decide", "_liveness")

    def __init__(
        self, clock: IReactorTime, liveness: Liveness, decide: Callable[[float], bool]
    ) -> None:
        self._clock = clock
        self._liveness = liveness
        self._decide = decide
        self._call: IDelayedCall | None = None

    @property
    def active(self) -> bool:
        return self._call is not None

    def start(self) -> None:
        """
        (Re)arm for the earliest possible deadline.
        """
        self.stop()
        at = self._liveness.nextCheck()
        if at is not None:
            now = self._clock.seconds()
            self._call = self._clock.callLater(max(0.0, at - now), self._fire)

    def stop(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _fire(self) -> None:
        self._call = None
        if self._decide(self._clock.seconds()):
            self.start()
