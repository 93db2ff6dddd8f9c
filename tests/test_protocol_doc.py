"""
docs/protocol.md's byte examples decode to what its prose says they are.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive.frames import (
    Ack,
    Close,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encodeFrame,
    encodeSequenced,
    parseFrame,
    parseSequenced,
)
from twisted_keepalive.frames import Data as DataFrame

SPEC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

EXPECTED: list[Frame] = [
    Hello(1, 10.0, 30.0, 1 << 20, "sensor-7", b"s3cret"),
    Hello(1, 10.0, 45.0, 1 << 20),
    Ping(1, 1700000000123456),
    Pong(1, 1700000000123456),
    DataFrame(b"hello"),
    Close(1001, "restarting", 2.5),
    Close(1000, "", None),
    # Version 2: sessions.
    Hello(2, 10.0, 30.0, 1 << 20, session=bytes(range(16)), received=0),
    Hello(2, 10.0, 45.0, 1 << 20, session=b"", received=0),
    Hello(2, 10.0, 30.0, 1 << 20, session=bytes(range(16)), received=7),
    Hello(2, 10.0, 45.0, 1 << 20, session=bytes(range(16)), received=12),
    DataFrame(bytes.fromhex("0000000000000008 000000000000000c") + b"hi"),
    DataFrame(bytes.fromhex("000000000000000d") + b"hello"),
    Ack(8),
]


class SpecExampleTests(SynchronousTestCase):
    def test_examplesDecodeAndReencode(self) -> None:
        blocks = re.findall(r"```hex\n(.*?)\n```", SPEC.read_text(), re.S)
        self.assertEqual(len(blocks), len(EXPECTED))
        for block, expected in zip(blocks, EXPECTED, strict=True):
            raw = bytes.fromhex(block)
            frames = [parseFrame(*f) for f in FrameDecoder().feed(raw)]
            self.assertEqual(frames, [expected])
            if isinstance(expected, DataFrame) and raw[5]:
                # A DATA of a session: its flags and numbers, as the prose says.
                seq, ack, message = parseSequenced(raw[5], expected.payload)
                self.assertEqual(encodeSequenced(seq, message, ack), raw)
            else:
                self.assertEqual(encodeFrame(expected), raw)

    def test_sessionDataExamplesSayWhatTheProseSays(self) -> None:
        self.assertEqual(parseSequenced(0x03, EXPECTED[-3].payload), (8, 12, b"hi"))
        self.assertEqual(parseSequenced(0x01, EXPECTED[-2].payload), (13, None, b"hello"))
