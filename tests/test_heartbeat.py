"""
HeartbeatProtocol on a fake clock and in-memory transports.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Factory
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_keepalive import (
    CloseCode,
    ClosedLocally,
    HandshakeTimeout,
    HeartbeatConfig,
    HeartbeatProtocol,
    HeartbeatTimeout,
    LocalProtocolError,
    PeerClosed,
    ProtocolViolation,
    Role,
)
from twisted_keepalive.frames import (
    PROTOCOL_VERSION,
    Close,
    Data,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encodeData,
    encodeFrame,
    encodeHello,
    encodePing,
    encodePong,
    parseFrame,
)

from .helpers import ClockTestCase, Recorder, RecordingProducer, capturingLogger, makePair


class Echo(Recorder):
    def messageReceived(self, message: bytes) -> None:
        super().messageReceived(message)
        self.sendMessage(message)


def frames(data: bytes) -> list[object]:
    return [parseFrame(*raw) for raw in FrameDecoder().feed(data)]


class HandshakeTests(ClockTestCase):
    def test_clientSpeaksFirstAndBothOpen(self) -> None:
        _c, s, _ = makePair(self.clock, connect=False)
        s.makeConnection(StringTransport())
        self.assertEqual(s.transport.value(), b"")
        c2, s2, pair = makePair(self.clock)
        self.assertTrue(c2.isOpen and s2.isOpen)
        self.assertEqual((c2.handshakes, s2.handshakes), (1, 1))
        self.assertEqual(c2.core.peerHello.maxFrame, 1 << 20)
        s.transport.loseConnection()
        s.connectionLost(Failure(ConnectionDone()))
        pair.clientTransport.loseConnection()
        pair.pump()

    def test_serverBoundsALongInterval(self) -> None:
        c, s, pair = makePair(
            self.clock,
            client=HeartbeatConfig(interval=20.0, timeout=60.0),
            server=HeartbeatConfig(interval=5.0, timeout=12.0),
        )
        # Pinging faster than asked keeps the configured dead-peer bound.
        self.assertEqual(c.stats.interval, 5.0)
        self.assertEqual(c.stats.timeout, 60.0)
        self.assertEqual(s.stats.timeout, 12.0)
        self.assertEqual(s.stats.interval, 5.0)  # what it told the client
        self.assertIsNone(s.core.liveness.interval)  # the server never pings
        c.close()
        pair.pump()

    def test_serverRaisesATooShortInterval(self) -> None:
        c, _, pair = makePair(
            self.clock,
            client=HeartbeatConfig(interval=0.1, timeout=0.5, maxInterval=1.0),
            server=HeartbeatConfig(interval=5.0, timeout=12.0, minInterval=1.0),
        )
        # A longer interval scales the timeout: the same 5 missed pings.
        self.assertEqual(c.stats.interval, 1.0)
        self.assertEqual(c.stats.timeout, 5.0)
        c.close()
        pair.pump()

    def test_serverDefaultFloorOnTheInterval(self) -> None:
        # A client asking to ping every millisecond is told the floor.
        c, s, pair = makePair(
            self.clock,
            client=HeartbeatConfig(interval=0.001, timeout=0.5, maxInterval=1.0),
            server=HeartbeatConfig(interval=5.0, timeout=12.0),
        )
        self.assertEqual(s.stats.interval, 0.1)
        self.assertEqual(c.stats.interval, 0.1)
        c.close()
        pair.pump()

    def test_clientRefusesAnIntervalBeyondItsBounds(self) -> None:
        # A hostile server announcing 2**32-1 ms would scale the client's
        # timeout to ~149 days: the client refuses the handshake instead.
        for interval, timeout in ((0xFFFFFFFF / 1000, 30.0), (0.001, 30.0)):
            c = Recorder(
                HeartbeatConfig(interval=1.0, timeout=3.0), role=Role.CLIENT, clock=self.clock
            )
            transport = StringTransport()
            c.makeConnection(transport)
            c.dataReceived(encodeHello(Hello(2, interval, timeout, 1 << 20)))
            self.assertFalse(c.isOpen)
            self.assertIn(b"outside this client's bounds", transport.value())
            c.connectionLost(Failure(ConnectionDone()))
            self.assertIsInstance(c.closeReason.value, ProtocolViolation)

    def test_scaledTimeoutIsCapped(self) -> None:
        # Within the bounds (4 x interval by default), the timeout scales
        # with the interval, so at most 4 x the configured timeout.
        c = Recorder(HeartbeatConfig(interval=1.0, timeout=3.0), role=Role.CLIENT, clock=self.clock)
        c.makeConnection(StringTransport())
        c.dataReceived(encodeHello(Hello(2, 4.0, 30.0, 1 << 20)))
        self.assertEqual(c.stats.timeout, 12.0)
        self.clock.advance(12.0)
        self.assertFalse(c.isOpen)
        c.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(c.closeReason.value, HeartbeatTimeout)

    def test_handshakeTimeoutServerSide(self) -> None:
        s = Recorder(HeartbeatConfig(handshakeTimeout=2.0), role=Role.SERVER, clock=self.clock)
        transport = StringTransport()
        s.makeConnection(transport)
        self.clock.advance(1.999)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.001)
        self.assertTrue(transport.disconnected)  # aborted, not closed politely
        s.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(s.closeReason.value, HandshakeTimeout)

    def test_handshakeTimeoutClientSide(self) -> None:
        c, _, pair = makePair(self.clock, connect=False)
        pair.serverToClient = False
        pair.connect()
        pair.advance(10.0)
        self.assertIsInstance(c.closed[0], HandshakeTimeout)

    def test_tokenAccepted(self) -> None:
        c, s, pair = makePair(
            self.clock,
            client=HeartbeatConfig(interval=1, timeout=3, token=b"s3cret", clientId="dev-1"),
            server=HeartbeatConfig(interval=5, timeout=10, token=b"s3cret"),
        )
        self.assertTrue(s.isOpen)
        self.assertEqual(s.core.peerHello.clientId, "dev-1")
        c.close()
        pair.pump()

    def test_tokenRefused(self) -> None:
        c, s, _pair = makePair(
            self.clock,
            client=HeartbeatConfig(interval=1, timeout=3, token=b"guess"),
            server=HeartbeatConfig(interval=5, timeout=10, token=b"s3cret"),
        )
        self.assertEqual(s.handshakes, 0)
        self.assertIsInstance(c.closed[0], PeerClosed)
        self.assertEqual(c.closed[0].code, CloseCode.AUTH_FAILED)
        self.assertEqual(s.closed[0].code, CloseCode.AUTH_FAILED)

    def test_roleFromFactory(self) -> None:
        p = HeartbeatProtocol()
        p.factory = ClientFactory()
        self.assertIs(p.role, Role.CLIENT)
        q = HeartbeatProtocol()
        q.factory = Factory()
        self.assertIs(q.role, Role.SERVER)
        self.assertRaises(LocalProtocolError, lambda: HeartbeatProtocol().role)

    def test_configFromFactory(self) -> None:
        factory = Factory.forProtocol(HeartbeatProtocol)
        config = HeartbeatConfig(interval=2.0, timeout=7.0)
        factory.heartbeatConfig = config
        factory.clock = self.clock
        p = factory.buildProtocol(None)
        assert isinstance(p, HeartbeatProtocol)
        self.assertIs(p.config, config)
        self.assertIs(p.clock, self.clock)


class ScheduleTests(ClockTestCase):
    def test_idleClientPingsEveryInterval(self) -> None:
        c, s, pair = makePair(self.clock)
        seen = []
        for _ in range(5):
            pair.advance(0.5)
            seen.append(s.stats.pingsReceived)
        self.assertEqual(seen, [0, 1, 1, 2, 2])
        self.assertEqual(len(c.rtts), 2)
        c.close()
        pair.pump()

    def test_noPingWhileTrafficFlowsBothWays(self) -> None:
        c = Recorder(HeartbeatConfig(interval=1.0, timeout=3.0), role=Role.CLIENT, clock=self.clock)
        s = Echo(HeartbeatConfig(interval=5.0, timeout=10.0), role=Role.SERVER, clock=self.clock)
        from twisted_keepalive.testing import MemoryPair

        pair = MemoryPair(c, s, self.clock).connect()
        for i in range(100):
            pair.advance(0.1)
            c.sendMessage(b"m%d" % i)
            pair.pump()
        self.assertEqual(c.stats.pingsSent, 0)
        self.assertEqual(len(c.messages), 100)
        # Traffic stops: the first ping goes out one interval after the last write.
        pair.advance(0.99)
        self.assertEqual(c.stats.pingsSent, 0)
        pair.advance(0.01)
        self.assertEqual(c.stats.pingsSent, 1)
        c.close()
        pair.pump()

    def test_listenerOnlyPeerIsProbed(self) -> None:
        # The client writes all the time to a server that never answers data:
        # it must still ping once per interval to hear proof of life.
        c, _s, pair = makePair(self.clock)
        for i in range(40):
            pair.advance(0.125)
            c.sendMessage(b"x%d" % i)
            pair.pump()
        self.assertEqual(c.stats.pingsSent, 5)
        self.assertTrue(c.isOpen)
        c.close()
        pair.pump()

    def test_serverPushKeepsClientQuietButProbed(self) -> None:
        # Inbound traffic proves life but the client still writes (a ping)
        # once per interval so that the server keeps hearing from it.
        c, s, pair = makePair(self.clock)
        for i in range(24):
            pair.advance(0.125)
            s.sendMessage(b"push%d" % i)
            pair.pump()
        self.assertEqual(c.stats.pingsSent, 3)
        c.close()
        pair.pump()

    def test_noTimerTouchedPerMessage(self) -> None:
        c, s, pair = makePair(self.clock)
        calls = []
        original = self.clock.callLater

        def counting(*a: Any, **kw: Any) -> Any:
            calls.append(a)
            return original(*a, **kw)

        self.clock.callLater = counting
        for i in range(1000):
            c.sendMessage(b"%d" % i)
            s.sendMessage(b"%d" % i)
        pair.pump()
        self.assertEqual((len(c.messages), len(s.messages)), (1000, 1000))
        self.assertEqual(calls, [])
        pending = [d for d in self.clock.getDelayedCalls() if d.active()]
        self.assertEqual(len(pending), 2)  # one timer per side, nothing else
        c.close()
        pair.pump()


class DeadPeerTests(ClockTestCase):
    def test_clientDetectsSilentServerAtExactlyTheTimeout(self) -> None:
        c, _s, pair = makePair(self.clock)
        pair.serverToClient = False  # the server's answers vanish
        tiny = 2.0**-20  # binary fractions keep the fake clock exact
        pair.advance(3.0 - tiny, step=0.25)
        self.assertTrue(c.isOpen)
        pair.advance(tiny)
        self.assertFalse(c.isOpen)
        reason = c.closeReason.value
        self.assertIsInstance(reason, HeartbeatTimeout)
        self.assertAlmostEqual(reason.silence, 3.0, places=9)
        self.assertEqual(reason.timeout, 3.0)
        self.assertTrue(pair.clientTransport.disconnected)  # aborted

    def test_serverEvictsSilentClientAtExactlyTheTimeout(self) -> None:
        c, _s, pair = makePair(self.clock)
        pair.clientToServer = False
        pair.advance(9.999, step=0.5)
        # The client itself is detecting the problem too (no PONGs) and dies first.
        self.assertIsInstance(c.closed[0], HeartbeatTimeout)

    def test_serverEvictionBound(self) -> None:
        # A server alone with a client that sent HELLO then went silent.
        s = Recorder(
            HeartbeatConfig(interval=5.0, timeout=10.0), role=Role.SERVER, clock=self.clock
        )
        transport = StringTransport()
        s.makeConnection(transport)
        self.clock.advance(1.0)
        s.dataReceived(encodeHello(Hello(1, 2.0, 6.0, 1 << 20)))
        self.clock.advance(9.999)
        self.assertTrue(s.isOpen)
        self.clock.advance(0.001)
        self.assertTrue(transport.disconnected)
        s.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(s.closeReason.value, HeartbeatTimeout)

    def test_anyWholeFrameCountsAsLife(self) -> None:
        c, _s, pair = makePair(self.clock)
        pair.serverToClient = False
        # One small message every 2.9 s keeps the client from declaring death.
        for i in range(20):
            pair.advance(2.9)
            c.dataReceived(encodeData(b"z%d" % i))
        self.assertTrue(c.isOpen)
        self.assertEqual(len(c.messages), 20)
        c.close()
        pair.pump()

    def test_trickledHalfFrameCannotHoldTheLink(self) -> None:
        # Bytes of one frame prove life only from its first byte: a frame
        # must complete within the timeout, however it is trickled.
        c, _s, pair = makePair(self.clock)
        pair.serverToClient = False
        frame = encodeData(b"z" * 100)
        pair.advance(1.0)
        c.dataReceived(frame[:1])
        for i in range(1, 20):
            self.clock.advance(0.1)
            c.dataReceived(frame[i : i + 1])
        self.assertTrue(c.isOpen)
        self.clock.advance(3.0 - 1.9 - 0.001)
        self.assertTrue(c.isOpen)
        self.clock.advance(0.001)  # 3 s after the frame's first byte
        self.assertFalse(c.isOpen)
        pair.pump()
        self.assertIsInstance(c.closeReason.value, HeartbeatTimeout)

    def test_slowFrameThatCompletesInTimeIsLife(self) -> None:
        c, _s, pair = makePair(self.clock)
        pair.serverToClient = False
        frame = encodeData(b"z" * 20)
        for i in range(len(frame)):
            self.clock.advance(0.1)  # 2.6 s for the whole frame: within 3 s
            c.dataReceived(frame[i : i + 1])
        self.assertEqual(c.messages, [b"z" * 20])
        self.clock.advance(2.9)
        self.assertTrue(c.isOpen)
        c.close()
        pair.pump()

    def test_unknownExtensionFrameSkippedButCountsAsLife(self) -> None:
        c, _s, pair = makePair(self.clock)
        pair.serverToClient = False
        pair.advance(2.5)
        c.dataReceived(b"\x00\x00\x00\x05\x90\x00abc")
        pair.advance(2.5)
        self.assertTrue(c.isOpen)
        c.close()
        pair.pump()


class RTTTests(ClockTestCase):
    def test_rttFromPongWithSmoothing(self) -> None:
        c, _s, pair = makePair(
            self.clock, server=HeartbeatConfig(interval=5.0, timeout=10.0, rttProbeEvery=0)
        )
        self.clock.advance(1.0)  # first ping written at t=1
        self.clock.advance(0.25)  # ... and answered 0.25 s later
        pair.pump()
        self.clock.advance(0.75)  # second ping at t=2 (one interval after the first)
        self.clock.advance(0.5)
        pair.pump()
        stats = c.stats
        self.assertEqual(c.rtts, [0.25, 0.5])
        self.assertEqual(stats.srtt, 0.875 * 0.25 + 0.125 * 0.5)
        self.assertEqual(stats.rttvar, 0.75 * 0.125 + 0.25 * 0.25)
        self.assertEqual((stats.lastRtt, stats.minRtt), (0.5, 0.25))
        self.assertEqual(stats.pongsReceived, 2)
        c.close()
        pair.pump()

    def test_serverProbesRttEveryNthPing(self) -> None:
        c, s, pair = makePair(
            self.clock, server=HeartbeatConfig(interval=5.0, timeout=10.0, rttProbeEvery=3)
        )
        pair.advance(6.0, step=0.25)
        # Client pings at 1..6; the server probes after the 1st and the 4th.
        self.assertEqual((s.stats.pingsSent, s.stats.pongsReceived), (2, 2))
        self.assertEqual(s.stats.srtt, 0.0)  # in memory, no delay
        self.assertEqual(c.stats.pingsReceived, 2)
        c.close()
        pair.pump()


class CloseTests(ClockTestCase):
    def test_closeCarriesCodeReasonAndHint(self) -> None:
        c, s, pair = makePair(self.clock)
        s.close(CloseCode.GOING_AWAY, "restarting", retryAfter=7.5)
        pair.pump()
        reason = c.closeReason.value
        self.assertIsInstance(reason, PeerClosed)
        self.assertEqual((reason.code, reason.reason, reason.retryAfter), (1001, "restarting", 7.5))
        self.assertIsInstance(s.closeReason.value, ClosedLocally)

    def test_applicationProducerFollowsTheTransport(self) -> None:
        c, s, pair = makePair(self.clock)
        producer = RecordingProducer()
        c.registerProducer(producer, True)
        self.assertIs(pair.clientTransport.producer, c)  # the protocol holds the slot
        pair.clientTransport.producer.pauseProducing()  # the socket buffer filled
        self.assertTrue(c.outputPaused)
        pair.clientTransport.producer.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        with self.assertRaises(LocalProtocolError):
            c.registerProducer(RecordingProducer(), True)
        c.unregisterProducer()
        with self.assertRaises(LocalProtocolError):
            c.registerProducer(RecordingProducer(), False)
        c.close()
        pair.pump()

    def test_lastWordsBeforeCloseAreDelivered(self) -> None:
        # The server says goodbye and closes: both land in one read.
        c, s, pair = makePair(self.clock)
        s.sendMessage(b"last words")
        s.close(CloseCode.GOING_AWAY, "bye", retryAfter=1.0)
        pair.pump()
        self.assertEqual(c.messages, [b"last words"])
        self.assertIsInstance(c.closeReason.value, PeerClosed)

    def test_messagesBeforeGarbageAreDelivered(self) -> None:
        c, s, pair = makePair(self.clock)
        c.dataReceived(encodeData(b"one") + encodeData(b"two") + b"\x00\x00\x00\x00\x00\x00")
        self.assertEqual(c.messages, [b"one", b"two"])
        pair.pump()
        self.assertIsInstance(c.closeReason.value, ProtocolViolation)

    def test_closeAbortsIfTheTransportNeverFlushes(self) -> None:
        c = Recorder(
            HeartbeatConfig(interval=1, timeout=3, closeTimeout=2.0),
            role=Role.CLIENT,
            clock=self.clock,
        )
        transport = StringTransport()
        c.makeConnection(transport)
        c.dataReceived(encodeHello(Hello(1, 1.0, 3.0, 4096)))
        c.close()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.clock.advance(2.0)
        self.assertTrue(transport.disconnected)
        c.connectionLost(Failure(ConnectionDone()))

    def test_sendBeforeHandshakeAndAfterClose(self) -> None:
        c, _s, pair = makePair(self.clock, connect=False)
        self.assertRaises(LocalProtocolError, c.sendMessage, b"x")
        pair.connect()
        c.close()
        pair.pump()
        with self.assertRaises(LocalProtocolError) as ctx:
            c.sendMessage(b"x")
        self.assertIn("closed", str(ctx.exception))

    def test_sendOverPeerLimit(self) -> None:
        c, s, pair = makePair(
            self.clock, server=HeartbeatConfig(interval=5.0, timeout=10.0, maxFrame=2048)
        )
        c.sendMessage(b"x" * 2046)
        with self.assertRaises(LocalProtocolError) as ctx:
            c.sendMessage(b"x" * 2047)
        self.assertIn("2046", str(ctx.exception))
        pair.pump()
        self.assertEqual(len(s.messages), 1)
        c.close()
        pair.pump()

    def test_applicationErrorClosesWithInternalError(self) -> None:
        class Broken(Recorder):
            def messageReceived(self, message: bytes) -> None:
                raise RuntimeError("bug")

        events: list[dict[str, Any]] = []
        c = Broken(HeartbeatConfig(interval=1, timeout=3), role=Role.CLIENT, clock=self.clock)
        s = Recorder(HeartbeatConfig(interval=5, timeout=10), role=Role.SERVER, clock=self.clock)
        c.log = capturingLogger(events)
        from twisted_keepalive.testing import MemoryPair

        pair = MemoryPair(c, s, self.clock).connect()
        s.sendMessage(b"boom")
        pair.pump()
        self.assertEqual(s.closed[0].code, CloseCode.INTERNAL_ERROR)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["peer"], "127.0.0.1:9000")
        self.flushLoggedErrors(RuntimeError)


class BadInputTests(ClockTestCase):
    """
    Each case: the peer sends something wrong; we answer CLOSE with a code,
    log one line naming the peer, and drop the connection.
    """

    def feed(self, role: Role, data: bytes, handshake: bool = True) -> tuple[Any, list[Any], bytes]:
        p = Recorder(
            HeartbeatConfig(interval=1.0, timeout=3.0, maxFrame=4096), role=role, clock=self.clock
        )
        events: list[dict[str, Any]] = []
        p.log = capturingLogger(events)
        transport = StringTransport()
        from twisted.internet.address import IPv4Address

        transport.peerAddr = IPv4Address("TCP", "127.0.0.1", 40404)
        p.makeConnection(transport)
        if handshake:
            p.dataReceived(encodeHello(Hello(1, 1.0, 3.0, 4096)))
        transport.clear()
        p.dataReceived(data)
        written = transport.value()
        self.assertTrue(transport.disconnecting)
        p.connectionLost(Failure(ConnectionDone()))
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["peer"], "127.0.0.1:40404")
        return p, warnings, written

    def assertClosedWith(
        self, role: Role, data: bytes, code: CloseCode, text: str, handshake: bool = True
    ) -> None:
        p, warnings, written = self.feed(role, data, handshake)
        sent = frames(written)
        self.assertIsInstance(sent[-1], Close)
        self.assertEqual(sent[-1].code, code)
        self.assertIn(text, sent[-1].reason)
        self.assertIn(text, warnings[0]["reason"])
        reason = p.closeReason.value
        self.assertIsInstance(reason, ProtocolViolation)
        self.assertEqual(reason.code, code)

    def test_garbage(self) -> None:
        self.assertClosedWith(
            Role.SERVER,
            b"GET / HTTP/1.1\r\n\r\n",
            CloseCode.FRAME_TOO_LARGE,
            "exceeds the limit",
            handshake=False,
        )

    def test_badLength(self) -> None:
        self.assertClosedWith(
            Role.CLIENT, b"\x00\x00\x00\x00\x00\x00", CloseCode.PROTOCOL_ERROR, "bad frame length 0"
        )

    def test_oversizedFrameRefusedBeforeBuffering(self) -> None:
        p, _, _ = self.feed(Role.CLIENT, struct.pack(">IBB", 4097, 4, 0) + b"x" * 100)
        self.assertLessEqual(p.core._decoder.buffered, 200)
        self.assertEqual(p.closeReason.value.code, CloseCode.FRAME_TOO_LARGE)

    def test_bigFrameBeforeHandshake(self) -> None:
        self.assertClosedWith(
            Role.SERVER,
            encodeData(b"x" * 5000),
            CloseCode.FRAME_TOO_LARGE,
            "limit of 4096",
            handshake=False,
        )

    def test_dataBeforeHello(self) -> None:
        self.assertClosedWith(
            Role.SERVER,
            encodeData(b"hi"),
            CloseCode.PROTOCOL_ERROR,
            "expected HELLO, got DATA",
            handshake=False,
        )

    def test_unknownVersion(self) -> None:
        self.assertClosedWith(
            Role.SERVER,
            encodeHello(Hello(0, 1.0, 3.0, 4096)),
            CloseCode.UNSUPPORTED_VERSION,
            "version 0",
            handshake=False,
        )

    def test_serverChoosesVersionClientNeverOffered(self) -> None:
        self.assertClosedWith(
            Role.CLIENT,
            encodeHello(Hello(9, 1.0, 3.0, 4096)),
            CloseCode.UNSUPPORTED_VERSION,
            "version 9",
            handshake=False,
        )

    def test_newerClientIsNegotiatedDown(self) -> None:
        s = Recorder(HeartbeatConfig(), role=Role.SERVER, clock=self.clock)
        transport = StringTransport()
        s.makeConnection(transport)
        s.dataReceived(encodeHello(Hello(7, 1.0, 3.0, 4096)))
        reply = frames(transport.value())[0]
        self.assertEqual(reply.version, PROTOCOL_VERSION)
        s.close()
        s.connectionLost(Failure(ConnectionDone()))

    def test_zeroInterval(self) -> None:
        self.assertClosedWith(
            Role.SERVER,
            encodeHello(Hello(1, 0.0, 3.0, 4096)),
            CloseCode.PROTOCOL_ERROR,
            "interval",
            handshake=False,
        )

    def test_pongNeverPinged(self) -> None:
        self.assertClosedWith(
            Role.CLIENT, encodePong(5, 123), CloseCode.PROTOCOL_ERROR, "never sent"
        )

    def test_pongWrongId(self) -> None:
        p = Recorder(HeartbeatConfig(interval=1.0, timeout=3.0), role=Role.CLIENT, clock=self.clock)
        transport = StringTransport()
        p.makeConnection(transport)
        p.dataReceived(encodeHello(Hello(1, 1.0, 3.0, 4096)))
        self.clock.advance(1.0)
        ping = frames(transport.value())[-1]
        assert isinstance(ping, Ping)
        p.dataReceived(encodeFrame(Pong(ping.id + 1, ping.timestamp)))
        self.assertIsInstance(p.closeReason, type(None))
        self.assertTrue(transport.disconnecting)
        p.connectionLost(Failure(ConnectionDone()))
        self.assertIn("oldest outstanding", str(p.closeReason.value))

    def test_secondHello(self) -> None:
        self.assertClosedWith(
            Role.SERVER,
            encodeHello(Hello(1, 1.0, 3.0, 4096)),
            CloseCode.PROTOCOL_ERROR,
            "after the handshake",
        )

    def test_malformedPing(self) -> None:
        self.assertClosedWith(
            Role.SERVER, b"\x00\x00\x00\x04\x02\x00ab", CloseCode.PROTOCOL_ERROR, "PING payload"
        )

    def test_inputAfterErrorIgnored(self) -> None:
        p, _, _ = self.feed(Role.CLIENT, b"\x00\x00\x00\x00\x00\x00" + encodeData(b"late"))
        self.assertEqual(p.messages, [])

    def test_pingAnsweredWithExactEcho(self) -> None:
        s = Recorder(HeartbeatConfig(rttProbeEvery=0), role=Role.SERVER, clock=self.clock)
        transport = StringTransport()
        s.makeConnection(transport)
        s.dataReceived(encodeHello(Hello(1, 1.0, 3.0, 4096)))
        transport.clear()
        s.dataReceived(encodePing(77, 2**63 + 5))
        self.assertEqual(frames(transport.value()), [Pong(77, 2**63 + 5)])
        s.close()
        s.connectionLost(Failure(ConnectionDone()))


class DirectControlWriteTests(ClockTestCase):
    """
    Control frames go straight to the socket of a plain TCP transport when
    nothing is queued ahead of them, and behind queued bytes otherwise.
    """

    def setUp(self) -> None:
        super().setUp()
        import socket

        from twisted.internet import tcp
        from twisted.internet.testing import MemoryReactorClock

        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.addCleanup(self.peer.close)
        self.reactor = MemoryReactorClock()
        self.protocol = HeartbeatProtocol(HeartbeatConfig(), role=Role.SERVER, clock=self.clock)
        self.transport = tcp.Connection(ours, self.protocol, self.reactor)
        self.transport.connected = True  # as tcp.Server sets it on accept
        self.addCleanup(ours.close)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(encodeHello(Hello(1, 1.0, 3.0, 1 << 20)))
        self.addCleanup(self.protocol.connectionLost, Failure(ConnectionDone()))

    def received(self) -> list[object]:
        try:
            return frames(self.peer.recv(1 << 16))
        except BlockingIOError:
            return []

    def test_idleReplyBypassesTheBuffer(self) -> None:
        self.assertIsInstance(self.received()[0], Hello)  # sent at once, no reactor pass
        self.protocol.dataReceived(encodePing(7, 99))
        # The PONG, then the server's first RTT probe (rttProbeEvery).
        self.assertEqual(self.received(), [Pong(7, 99), Ping(1, 0)])
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_replyQueuesBehindBufferedMessages(self) -> None:
        self.received()
        self.protocol.sendMessage(b"first")  # buffered by Twisted until a write pass
        self.protocol.dataReceived(encodePing(8, 1))
        self.assertEqual(self.received(), [])  # the PONG did not jump the queue
        self.transport.doWrite()
        self.assertEqual(self.received(), [Data(b"first"), Pong(8, 1), Ping(1, 0)])


class NoDelayTests(ClockTestCase):
    """
    Nagle's algorithm is off on a real TCP connection (a push written while
    an earlier frame awaits the peer's delayed ACK would otherwise wait up
    to 40 ms), unless the config keeps it.
    """

    def connection(self, config: HeartbeatConfig) -> int:
        import socket

        from twisted.internet import tcp
        from twisted.internet.testing import MemoryReactorClock

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
        for s in (listener, client, ours):
            self.addCleanup(s.close)
        protocol = HeartbeatProtocol(config, role=Role.SERVER, clock=self.clock)
        transport = tcp.Connection(ours, protocol, MemoryReactorClock())
        transport.connected = True
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    def test_onByDefault(self) -> None:
        self.assertNotEqual(self.connection(HeartbeatConfig()), 0)

    def test_canBeKept(self) -> None:
        self.assertEqual(self.connection(HeartbeatConfig(tcpNoDelay=False)), 0)


class KernelClockTests(ClockTestCase):
    """
    On a real TCP socket (Linux) a client's fast send path reads no clock:
    each heartbeat check that follows writes asks the kernel when the
    socket last sent (TCP_INFO), so pings stay exactly as due.
    """

    def setUp(self) -> None:
        super().setUp()
        import socket

        from twisted_keepalive import heartbeat

        sock = socket.socket()
        self.addCleanup(sock.close)
        self.ago: float | None = 0.0
        self.asked = 0

        def lastDataSent(s: object) -> float | None:
            self.asked += 1
            return self.ago

        self.patch(heartbeat, "lastDataSent", lastDataSent)

        class Transport(StringTransport):
            def getHandle(self) -> object:
                return sock

        self.transport = Transport()
        self.protocol = HeartbeatProtocol(
            HeartbeatConfig(interval=10.0, timeout=30.0), role=Role.CLIENT, clock=self.clock
        )
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(encodeHello(Hello(PROTOCOL_VERSION, 10.0, 60.0, 1 << 20)))
        self.transport.clear()
        self.addCleanup(self.protocol.connectionLost, Failure(ConnectionDone()))
        self.asked = 0
        # The writer-idle rule alone (the peer's silence would ping too).
        self.protocol.core.liveness.probeSilence = False

    def pings(self) -> list[object]:
        frames: list[object] = [f for f in _frames(self.transport.value()) if isinstance(f, Ping)]
        self.transport.clear()
        return frames

    def test_noClockPerMessageAndPingsStillExact(self) -> None:
        liveness = self.protocol.core.liveness
        self.assertIn("sendMessage", vars(self.protocol))  # a client's: from the handshake
        self.advance(2.0)
        self.protocol.sendMessage(b"hello")
        self.assertEqual(liveness.lastSent, 0.0)  # no clock read
        self.advance(8.0 - 0.125)
        self.assertEqual((self.pings(), self.asked), ([], 0))
        # The check at 10 s: the kernel says the last send was 8 s ago.
        self.ago = 8.0
        self.advance(0.125)
        self.assertEqual(self.asked, 1)
        self.assertEqual(self.pings(), [])  # not idle for 10 s yet
        self.assertAlmostEqual(liveness.lastSent, 2.004)
        self.advance(2.0)  # 12.0: the tick's slack is not over
        self.assertEqual(self.pings(), [])
        self.advance(0.125)  # 12.125 >= 2.004 + 10
        self.assertEqual(len(self.pings()), 1)
        self.assertEqual(self.asked, 1)  # nothing written since: no question

    def test_stillBufferedCountsAsWritingNow(self) -> None:
        liveness = self.protocol.core.liveness
        self.protocol.sendMessage(b"x")
        self.protocol._plainTCP = _Buffered()
        self.advance(10.0)
        self.assertEqual(self.asked, 0)  # the kernel has not sent it yet
        self.assertEqual(liveness.lastSent, 10.0)
        self.assertEqual(self.pings(), [])
        self.protocol._plainTCP = None

    def test_countersReachTheStats(self) -> None:
        before = self.protocol.stats.bytesOut
        for _ in range(3):
            self.protocol.sendMessage(b"abc")
        stats = self.protocol.stats
        self.assertEqual((stats.messagesOut, stats.bytesOut - before), (3, 3 * 9))


class _Buffered:
    _tempDataLen = 1
    offset = 0
    dataBuffer = b""


def _frames(data: bytes) -> list[object]:
    decoder = FrameDecoder()
    return [parseFrame(*raw) for raw in decoder.feed(data)]


class LazyFastPathTests(ClockTestCase):
    """
    A server's fast send path goes in place at its first message (an idle
    connection does not pay for it), even through a bound method taken
    before; after the connection is gone, sending raises as always.
    """

    def test_boundMethodTakenEarly(self) -> None:
        transport = StringTransport()
        p = HeartbeatProtocol(HeartbeatConfig(), role=Role.SERVER, clock=self.clock)
        p.makeConnection(transport)
        p.dataReceived(encodeHello(Hello(PROTOCOL_VERSION, 10.0, 30.0, 1 << 20)))
        send = p.sendMessage  # the class's, bound before the first message
        self.assertNotIn("sendMessage", vars(p))
        transport.clear()
        send(b"one")
        self.assertIn("sendMessage", vars(p))
        send(b"two")
        p.sendMessage(b"three")
        got = [f for f in _frames(transport.value())]
        self.assertEqual(got, [Data(b"one"), Data(b"two"), Data(b"three")])
        self.assertEqual(p.stats.messagesOut, 3)
        p.connectionLost(Failure(ConnectionDone()))
        with self.assertRaises(LocalProtocolError):
            send(b"late")
        with self.assertRaises(LocalProtocolError):
            p.sendMessage(b"late")
