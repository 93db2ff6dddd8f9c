"""
Shared test scaffolding.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol, Role
from twisted_keepalive.testing import MemoryPair


def capturingLogger(events: list[dict[str, Any]]) -> Logger:
    """
    A Logger that appends its events to C{events}.
    """
    return Logger(observer=cast(ILogObserver, events.append))


class ClockTestCase(SynchronousTestCase):
    """
    A test with a fake clock that must end with no DelayedCall pending,
    unless the test has closed everything it opened.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.addCleanup(self.assertNoDelayedCalls)

    def advance(self, seconds: float, step: float = 0.125) -> None:
        """
        Move the clock in small steps, as time really passes: one big jump
        would run a periodic timer once, late, instead of at each period.
        """
        while seconds > 1e-12:
            delta = min(step, seconds)
            self.clock.advance(delta)
            seconds -= delta

    def assertNoDelayedCalls(self) -> None:
        pending = [c for c in self.clock.getDelayedCalls() if c.active()]
        self.assertEqual(pending, [], "DelayedCalls left behind")


class Recorder(HeartbeatProtocol):
    """
    A HeartbeatProtocol that records what it is told.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[bytes] = []
        self.rtts: list[float] = []
        self.handshakes = 0
        self.closed: list[object] = []

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def messageReceived(self, message: bytes) -> None:
        self.messages.append(message)

    def pongReceived(self, rtt: float) -> None:
        self.rtts.append(rtt)

    def connectionClosed(self, reason) -> None:
        self.closed.append(reason.value)


def makePair(
    clock: Clock,
    client: HeartbeatConfig | None = None,
    server: HeartbeatConfig | None = None,
    connect: bool = True,
) -> tuple[Recorder, Recorder, MemoryPair]:
    c = Recorder(
        client or HeartbeatConfig(interval=1.0, timeout=3.0), role=Role.CLIENT, clock=clock
    )
    s = Recorder(
        server or HeartbeatConfig(interval=5.0, timeout=10.0), role=Role.SERVER, clock=clock
    )
    pair = MemoryPair(c, s, clock)
    if connect:
        pair.connect()
    return c, s, pair


@implementer(IPushProducer)
class RecordingProducer:
    """
    A push producer that records what its consumer asks of it.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def paused(self) -> bool:
        return bool(self.calls) and self.calls[-1] == "pause"

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")
