"""
Foreign-protocol mode.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_keepalive import HeartbeatTimeout, RawHeartbeatConfig, RawHeartbeatProtocol
from twisted_keepalive.raw import unescape

from .helpers import ClockTestCase


class Raw(RawHeartbeatProtocol):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.received: list[bytes] = []
        self.pongs: list[float] = []

    def rawDataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def pongReceived(self, rtt: float) -> None:
        self.pongs.append(rtt)


class RawTests(ClockTestCase):
    def connect(self, config: RawHeartbeatConfig) -> tuple[Raw, StringTransport]:
        p = Raw(config, clock=self.clock)
        t = StringTransport()
        p.makeConnection(t)
        return p, t

    def test_withReplyMeasuresRttAndStaysAlive(self) -> None:
        p, t = self.connect(RawHeartbeatConfig(b"PING\r\n", rb"\+PONG\r\n", 1.0, 3.0))
        self.clock.advance(1.0)
        self.assertEqual(t.value(), b"PING\r\n")
        self.clock.advance(0.125)
        p.dataReceived(b"+PO")
        p.dataReceived(b"NG\r\n")
        self.assertEqual(p.rtt.last, 0.125)
        self.assertEqual(p.received, [b"+PO", b"NG\r\n"])
        self.assertEqual(p.repliesMatched, 1)
        self.assertEqual(p.pongs, [0.125])  # the same hook as HeartbeatProtocol's
        # Silent from 1.125 on: dead at exactly 1.125 + 3.
        self.advance(2.875)
        self.assertFalse(t.disconnected)
        self.advance(0.125)
        self.assertTrue(t.disconnected)
        p.connectionLost(Failure(ConnectionDone()))

    def test_withReplyDeadAfterSilence(self) -> None:
        p, t = self.connect(RawHeartbeatConfig(b"PING\r\n", rb"\+PONG", 1.0, 3.0))
        self.advance(2.875)
        self.assertFalse(t.disconnected)
        self.advance(0.125)
        self.assertTrue(t.disconnected)
        self.assertEqual(t.value(), b"PING\r\n" * 2)
        p.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(p.closeReason.value, HeartbeatTimeout)

    def test_anyByteCountsAsLife(self) -> None:
        p, t = self.connect(RawHeartbeatConfig(b"PING\r\n", rb"\+PONG", 1.0, 3.0))
        for _ in range(10):
            self.advance(2.0)
            p.dataReceived(b"unrelated")
        self.assertFalse(t.disconnected)
        self.assertEqual(p.repliesMatched, 0)
        p.connectionLost(Failure(ConnectionDone()))

    def test_oneWayNeverDeclaresDeathAndPingsOnlyWhenWriterIdle(self) -> None:
        p, t = self.connect(RawHeartbeatConfig(b"\x00", None, 1.0))
        self.clock.advance(0.5)
        p.sendRaw(b"app")
        self.clock.advance(1.0)
        self.assertEqual(t.value(), b"app\x00")  # ping at 1.5, one interval after the write
        self.advance(100.0)
        self.assertFalse(t.disconnected)
        self.assertEqual(p.pingsSent, 101)
        p.connectionLost(Failure(ConnectionDone()))

    def test_unescape(self) -> None:
        self.assertEqual(unescape(r"PING\r\n"), b"PING\r\n")
        self.assertEqual(unescape(r"\x00\xff"), b"\x00\xff")

    def test_badConfig(self) -> None:
        with self.assertRaises(ValueError) as ctx:
            RawHeartbeatConfig(b"P", rb"(", 1.0, 3.0)
        self.assertIn("bad reply pattern", str(ctx.exception))
        self.assertRaises(ValueError, RawHeartbeatConfig, b"", None)
        self.assertRaises(ValueError, RawHeartbeatConfig, b"P", rb"x", 2.0, 1.0)
