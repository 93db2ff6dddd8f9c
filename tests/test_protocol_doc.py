"""
docs/protocol.md's byte examples decode to what its prose says they are.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive.frames import (
    Close,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encodeFrame,
    parseFrame,
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
]


class SpecExampleTests(SynchronousTestCase):
    def test_examplesDecodeAndReencode(self) -> None:
        blocks = re.findall(r"```hex\n(.*?)\n```", SPEC.read_text(), re.S)
        self.assertEqual(len(blocks), len(EXPECTED))
        for block, expected in zip(blocks, EXPECTED, strict=True):
            raw = bytes.fromhex(block)
            frames = [parseFrame(*f) for f in FrameDecoder().feed(raw)]
            self.assertEqual(frames, [expected])
            self.assertEqual(encodeFrame(expected), raw)
