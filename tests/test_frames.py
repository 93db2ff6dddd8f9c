"""
The wire codec: encoders, parser, incremental decoder, limits.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive.errors import CloseCode, RemoteProtocolError
from twisted_keepalive.frames import (
    DATA_ACK,
    DATA_SEQ,
    Close,
    Data,
    Extension,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encodeClose,
    encodeData,
    encodeFrame,
    encodeHello,
    encodeSequenced,
    parseFrame,
)


def decodeAll(data: bytes, maxFrame: int = 1 << 20) -> list[object]:
    decoder = FrameDecoder(maxFrame)
    return [parseFrame(*raw) for raw in decoder.feed(data)]


class EncodingTests(SynchronousTestCase):
    def test_dataLayout(self) -> None:
        self.assertEqual(encodeData(b"hi"), b"\x00\x00\x00\x04\x04\x00hi")

    def test_emptyData(self) -> None:
        self.assertEqual(decodeAll(encodeData(b"")), [Data(b"")])

    def test_roundTripEveryType(self) -> None:
        frames: list[Frame] = [
            Hello(1, 10.0, 30.0, 1 << 20, "sensor-7", b"secret"),
            Hello(1, 0.25, 0.0, 4096),
            Ping(1, 1_700_000_000_000_000),
            Pong(0xFFFFFFFF, 0),
            Data(b"\x00" * 300),
            Close(CloseCode.GOING_AWAY, "restarting", 2.5),
            Close(CloseCode.NORMAL, "", None),
            Extension(0x90, 3, b"ext"),
        ]
        self.assertEqual(decodeAll(b"".join(encodeFrame(f) for f in frames)), frames)

    def test_closeReasonTruncatedToLimitOnCharacterBoundary(self) -> None:
        frame = parseFrame(*next(FrameDecoder().feed(encodeClose(1000, "é" * 600))))
        assert isinstance(frame, Close)
        self.assertEqual(frame.reason, "é" * 512)

    def test_helloIgnoresUnknownFields(self) -> None:
        raw = encodeHello(Hello(1, 1.0, 3.0, 4096, "id"))
        extra = b"\x7f\x00\x03abc"
        raw = struct.pack(">I", len(raw) - 4 + len(extra)) + raw[4:] + extra
        self.assertEqual(decodeAll(raw), [Hello(1, 1.0, 3.0, 4096, "id")])


class MalformedTests(SynchronousTestCase):
    def assertRefused(self, data: bytes, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> str:
        with self.assertRaises(RemoteProtocolError) as ctx:
            decodeAll(data, maxFrame=4096)
        self.assertEqual(ctx.exception.code, code)
        return str(ctx.exception)

    def test_lengthTooSmall(self) -> None:
        self.assertIn("bad frame length 1", self.assertRefused(b"\x00\x00\x00\x01\x04\x00"))

    def test_lengthOverLimitRefusedFromHeader(self) -> None:
        decoder = FrameDecoder(4096)
        with self.assertRaises(RemoteProtocolError) as ctx:
            list(decoder.feed(struct.pack(">IBB", 4097, 4, 0)))
        self.assertEqual(ctx.exception.code, CloseCode.FRAME_TOO_LARGE)
        self.assertEqual(decoder.buffered, 6)  # nothing of the payload was awaited

    def test_unknownCriticalType(self) -> None:
        self.assertIn("unknown frame type 0x42", self.assertRefused(b"\x00\x00\x00\x02\x42\x00"))

    def test_pingWrongSize(self) -> None:
        self.assertIn("PING payload is 3 bytes", self.assertRefused(b"\x00\x00\x00\x05\x02\x00abc"))

    def test_closeTooShort(self) -> None:
        self.assertRefused(b"\x00\x00\x00\x03\x05\x00\x03")

    def test_helloTooShort(self) -> None:
        self.assertRefused(b"\x00\x00\x00\x03\x01\x00\x01")

    def test_helloTruncatedField(self) -> None:
        hello = encodeHello(Hello(1, 1.0, 3.0, 4096))
        raw = struct.pack(">I", len(hello) - 4 + 3) + hello[4:] + b"\x01\x00\x09"
        self.assertIn("truncated", self.assertRefused(raw))

    def test_helloRepeatedField(self) -> None:
        hello = encodeHello(Hello(1, 1.0, 3.0, 4096, "a"))
        raw = struct.pack(">I", len(hello) - 4 + 4) + hello[4:] + b"\x01\x00\x01b"
        self.assertIn("repeated", self.assertRefused(raw))

    def test_helloClientIdNotUtf8(self) -> None:
        hello = encodeHello(Hello(1, 1.0, 3.0, 4096))
        raw = struct.pack(">I", len(hello) - 4 + 4) + hello[4:] + b"\x01\x00\x01\xff"
        self.assertIn("UTF-8", self.assertRefused(raw))

    def test_helloMaxFrameTooSmall(self) -> None:
        self.assertIn("max_frame", self.assertRefused(encodeHello(Hello(1, 1.0, 3.0, 100))))


class DecoderTests(SynchronousTestCase):
    def test_byteByByte(self) -> None:
        stream = encodeData(b"abc") + encodeData(b"") + encodeData(b"xyz" * 100)
        decoder = FrameDecoder()
        out: list[tuple[int, int, bytes]] = []
        for i in range(len(stream)):
            out.extend(decoder.feed(stream[i : i + 1]))
        self.assertEqual([p for _, _, p in out], [b"abc", b"", b"xyz" * 100])
        self.assertEqual(decoder.buffered, 0)

    def test_limitChangesBetweenFrames(self) -> None:
        decoder = FrameDecoder(16)
        big = encodeData(b"x" * 100)
        frames = decoder.feed(encodeData(b"a") + big)
        self.assertEqual(next(frames)[2], b"a")
        decoder.maxFrame = 1000
        self.assertEqual(next(frames)[2], b"x" * 100)

    def test_largeFrameInSmallChunksIsNotRecopied(self) -> None:
        payload = bytes(range(256)) * 1024
        stream = encodeData(payload)
        decoder = FrameDecoder()
        got: list[tuple[int, int, bytes]] = []
        for i in range(0, len(stream), 1000):
            got.extend(decoder.feed(stream[i : i + 1000]))
            # Until the frame is complete the chunks are only collected.
            self.assertLessEqual(len(decoder._chunks), len(stream) // 1000 + 1)
        self.assertEqual([p for _, _, p in got], [payload])


frameStrategy = st.one_of(
    st.builds(Data, st.binary(max_size=200)),
    st.builds(Ping, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
    st.builds(Pong, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
    st.builds(
        Close,
        st.integers(0, 65535),
        st.text(max_size=50),
        st.one_of(st.none(), st.integers(0, 10**6).map(lambda ms: ms / 1000)),
    ),
    st.builds(
        Hello,
        st.integers(1, 255),
        st.integers(1, 10**6).map(lambda ms: ms / 1000),
        st.integers(0, 10**6).map(lambda ms: ms / 1000),
        st.integers(1024, 2**32 - 1),
        st.one_of(st.none(), st.text(max_size=40)),
        st.one_of(st.none(), st.binary(min_size=1, max_size=64)),
    ),
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(frameStrategy, max_size=12), st.data())
    def test_anySplitDecodesTheSame(self, frames: list[Frame], data: st.DataObject) -> None:
        stream = b"".join(encodeFrame(f) for f in frames)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        decoder = FrameDecoder()
        got: list[Frame] = []
        previous = 0
        for cut in [*cuts, len(stream)]:
            got.extend(parseFrame(*raw) for raw in decoder.feed(stream[previous:cut]))
            previous = cut
        self.assertEqual(got, frames)
        self.assertEqual(decoder.buffered, 0)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.integers(1024, 8192))
    def test_arbitraryBytesOnlyRaiseProtocolErrors(self, data: bytes, maxFrame: int) -> None:
        decoder = FrameDecoder(maxFrame)
        try:
            for raw in decoder.feed(data):
                parseFrame(*raw)
        except RemoteProtocolError:
            return
        self.assertLessEqual(decoder.buffered, maxFrame + 4)


class LargeFrameSplitTests(SynchronousTestCase):
    """
    Large frames split anywhere (held as views of the reads, completed with
    one copy) and trickled ones (gathered in place) decode the same, and
    every payload is bytes.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.integers(0, 9000), min_size=1, max_size=6),
        st.data(),
    )
    def test_largeFramesAnySplit(self, sizes: list[int], data: st.DataObject) -> None:
        payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        stream = b"".join(encodeData(p) for p in payloads)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
        decoder = FrameDecoder()
        got: list[bytes] = []
        previous = 0
        for cut in [*cuts, len(stream)]:
            for _ftype, _, payload in decoder.feed(stream[previous:cut]):
                self.assertIs(type(payload), bytes)
                got.append(payload)
            previous = cut
        self.assertEqual(got, payloads)
        self.assertEqual(decoder.buffered, 0)

    def test_tricklesThenALargeRead(self) -> None:
        payloads = [b"a" * 3000, b"b" * 70000, b"c" * 10]
        stream = b"".join(encodeData(p) for p in payloads)
        decoder = FrameDecoder()
        got: list[bytes] = []
        for i in range(40):  # one byte at a time: gathered in place
            got.extend(p for _, _, p in decoder.feed(stream[i : i + 1]))
        got.extend(p for _, _, p in decoder.feed(stream[40:]))
        self.assertEqual(got, payloads)


class SplitSessionDataTests(SynchronousTestCase):
    """
    With C{split}, a session's DATA frame comes out as its message alone,
    its sequence number and ACK in the decoder, however it was cut.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 2**64 - 1),
                st.one_of(st.none(), st.integers(0, 2**64 - 1)),
                st.integers(0, 5000),
            ),
            min_size=1,
            max_size=6,
        ),
        st.data(),
    )
    def test_anySplit(self, frames: list[tuple[int, int | None, int]], data: st.DataObject) -> None:
        messages = [(seq, ack, bytes([seq % 251]) * n) for seq, ack, n in frames]
        stream = b"".join(encodeSequenced(seq, m, ack) for seq, ack, m in messages)
        stream += encodeData(b"plain")
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
        decoder = FrameDecoder()
        got: list[tuple[int | None, int | None, bytes]] = []
        previous = 0
        for cut in [*cuts, len(stream)]:
            for _, flags, payload in decoder.feed(stream[previous:cut], True):
                if flags & DATA_SEQ:
                    got.append((decoder.seq, decoder.ack if flags & DATA_ACK else None, payload))
                else:
                    got.append((None, None, payload))
            previous = cut
        self.assertEqual(got, [*messages, (None, None, b"plain")])

    def test_tooShortForItsFlags(self) -> None:
        for flags, size in ((DATA_SEQ, 7), (DATA_SEQ | DATA_ACK, 15)):
            frame = struct.pack(">IBB", size + 2, 4, flags) + b"x" * size
            with self.assertRaises(RemoteProtocolError):
                list(FrameDecoder().feed(frame, True))
            decoder = FrameDecoder()
            list(decoder.feed(frame[:3], True))
            with self.assertRaises(RemoteProtocolError):
                list(decoder.feed(frame[3:], True))
