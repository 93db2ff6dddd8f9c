"""
The wire format: frame types, encoders, and an incremental decoder.

Pure bytes in, bytes out; no Twisted.  docs/protocol.md is the normative
description and its byte examples are checked against this module by the
test suite.

Every frame is::

    length:u32  type:u8  flags:u8  payload[length - 2]

with all integers big-endian and C{length} counting the type and flags bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from .errors import CloseCode, RemoteProtocolError

#: The protocol version this implementation speaks.  Version 2 adds
#: sessions (sequence numbers, ACK, resume); a version-1 peer gets version 1.
PROTOCOL_VERSION = 2
#: The first version with sessions.
SESSION_VERSION = 2
#: The lowest version this implementation accepts.
MIN_PROTOCOL_VERSION = 1

#: Default largest frame (the C{length} field) a receiver accepts: 1 MiB.
DEFAULT_MAX_FRAME = 1 << 20
#: Largest frame accepted before the handshake completes; bounds what an
#: unauthenticated peer can make us buffer.
HANDSHAKE_MAX_FRAME = 4096
#: Smallest C{max_frame} a peer may announce: enough for any control frame.
MIN_MAX_FRAME = 1024

#: C{retry_after_ms} value meaning "no hint".
NO_RETRY_HINT = 0xFFFFFFFF
#: Longest CLOSE reason text, in bytes of UTF-8.
MAX_REASON_BYTES = 1024
#: Longest client id or token, in bytes.
MAX_FIELD_BYTES = 255
#: Longest time a HELLO can carry (u32 milliseconds): about 49.7 days.
MAX_WIRE_SECONDS = 0xFFFFFFFF / 1000
#: Largest C{max_frame} (u32).
MAX_WIRE_FRAME = 0xFFFFFFFF

_HEADER = struct.Struct(">IBB")
_LENGTH = struct.Struct(">I")
#: Reads kept apart before they are gathered into one buffer (see feed).
_MAX_CHUNKS = 4
#: ...when they average less than this many bytes.
_SMALL_CHUNK = 1024
#: A frame this small gets its whole buffer at once when trickled.
_SMALL_FRAME = HANDSHAKE_MAX_FRAME + 6  # and its header
HEADER_SIZE = _HEADER.size  # 6
_HELLO_FIXED = struct.Struct(">BIII")
_PING = struct.Struct(">IQ")
_CLOSE_FIXED = struct.Struct(">HI")
_TLV = struct.Struct(">BH")
_U64 = struct.Struct(">Q")
_U64U64 = struct.Struct(">QQ")


class FrameType(IntEnum):
    """
    Frame types.  0x00-0x7F are critical (an unknown one is a protocol
    error); 0x80-0xFF are extensions that a receiver that does not know them
    skips.
    """

    HELLO = 0x01
    PING = 0x02
    PONG = 0x03
    DATA = 0x04
    CLOSE = 0x05
    ACK = 0x06  # version 2


#: DATA flags (version 2, in a session): the payload starts with the
#: message's sequence number (u64), then, with ACK, the sender's cumulative
#: acknowledgement (u64), then the message.
DATA_SEQ = 0x01
DATA_ACK = 0x02
#: Length of a session id.
SESSION_ID_BYTES = 16


EXTENSION_TYPE_MIN = 0x80


class HelloField(IntEnum):
    """
    Tags of the optional TLV fields that follow HELLO's fixed part.
    Unknown tags are ignored, which is how later versions add fields.
    """

    CLIENT_ID = 0x01
    TOKEN = 0x02
    SESSION = 0x03  # version 2: session id (empty: "start one"), 0 or 16 bytes
    RECEIVED = 0x04  # version 2: last sequence number received in order, u64


@dataclass(frozen=True, slots=True)
class Hello:
    """
    The handshake frame, sent first by each side.

    @ivar version: client: the highest version it speaks; server: the
        version chosen for this connection.
    @ivar interval: client: its proposed ping interval; server: the interval
        the client must use.  Seconds (milliseconds on the wire).
    @ivar timeout: the inbound silence after which the sender declares the
        peer dead (a server: evicts it); 0 means never.  Seconds.
    @ivar maxFrame: the largest C{length} the sender accepts.
    """

    version: int
    interval: float
    timeout: float
    maxFrame: int
    clientId: str | None = None
    token: bytes | None = None
    session: bytes | None = None
    received: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    received: int  # cumulative: every message up to this sequence number


@dataclass(frozen=True, slots=True)
class Ping:
    id: int
    timestamp: int  # microseconds on the sender's clock; opaque to the receiver


@dataclass(frozen=True, slots=True)
class Pong:
    id: int
    timestamp: int  # echoed from the PING


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str = ""
    retryAfter: float | None = None  # seconds


@dataclass(frozen=True, slots=True)
class Data:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Extension:
    """
    A frame of an extension type (0x80-0xFF) that this version skips.
    """

    type: int
    flags: int
    payload: bytes


Frame = Hello | Ping | Pong | Close | Data | Ack | Extension


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _frame(ftype: int, payload: bytes, flags: int = 0) -> bytes:
    return _HEADER.pack(len(payload) + 2, ftype, flags) + payload


def encodeData(payload: bytes) -> bytes:
    """
    Encode one DATA frame.  The hot path: one pack and one concatenation.
    """
    return _HEADER.pack(len(payload) + 2, 4, 0) + payload


def encodePing(pingId: int, timestamp: int) -> bytes:
    return _frame(FrameType.PING, _PING.pack(pingId, timestamp))


def encodePong(pingId: int, timestamp: int) -> bytes:
    return _frame(FrameType.PONG, _PING.pack(pingId, timestamp))


def encodeClose(code: int, reason: str = "", retryAfter: float | None = None) -> bytes:
    text = reason.encode("utf-8")[:MAX_REASON_BYTES]
    # Cutting UTF-8 may split a character; drop the partial one.
    text = text.decode("utf-8", "ignore").encode("utf-8")
    hint = (
        NO_RETRY_HINT if retryAfter is None else min(_ms(max(retryAfter, 0.0)), NO_RETRY_HINT - 1)
    )
    return _frame(FrameType.CLOSE, _CLOSE_FIXED.pack(code, hint) + text)


def encodeHello(hello: Hello) -> bytes:
    body = [
        _HELLO_FIXED.pack(hello.version, _ms(hello.interval), _ms(hello.timeout), hello.maxFrame)
    ]
    if hello.clientId is not None:
        value = hello.clientId.encode("utf-8")
        body.append(_TLV.pack(HelloField.CLIENT_ID, len(value)) + value)
    if hello.token is not None:
        body.append(_TLV.pack(HelloField.TOKEN, len(hello.token)) + hello.token)
    if hello.session is not None:
        body.append(_TLV.pack(HelloField.SESSION, len(hello.session)) + hello.session)
    if hello.received is not None:
        body.append(_TLV.pack(HelloField.RECEIVED, 8) + _U64.pack(hello.received))
    return _frame(FrameType.HELLO, b"".join(body))


def encodeAck(received: int) -> bytes:
    return _frame(FrameType.ACK, _U64.pack(received))


def encodeSequenced(seq: int, message: bytes, ack: int | None = None) -> bytes:
    """A DATA frame in a session: its sequence number, maybe an ACK, the message."""
    if ack is None:
        return _frame(FrameType.DATA, _U64.pack(seq) + message, DATA_SEQ)
    return _frame(FrameType.DATA, _U64U64.pack(seq, ack) + message, DATA_SEQ | DATA_ACK)


def parseSequenced(flags: int, payload: bytes) -> tuple[int, int | None, bytes]:
    """
    C{(seq, ack or None, message)} of a DATA frame with L{DATA_SEQ}.

    @raise RemoteProtocolError: the payload is too short for its flags.
    """
    if flags & DATA_ACK:
        if len(payload) < 16:
            raise RemoteProtocolError("DATA with SEQ and ACK needs at least 16 bytes")
        seq, ack = _U64U64.unpack_from(payload)
        return seq, ack, payload[16:]
    if len(payload) < 8:
        raise RemoteProtocolError("DATA with SEQ needs at least 8 bytes")
    return _U64.unpack_from(payload)[0], None, payload[8:]


def encodeFrame(frame: Frame) -> bytes:
    """
    Encode any frame object; convenient for tests and tools.
    """
    if isinstance(frame, Data):
        return encodeData(frame.payload)
    if isinstance(frame, Ping):
        return encodePing(frame.id, frame.timestamp)
    if isinstance(frame, Pong):
        return encodePong(frame.id, frame.timestamp)
    if isinstance(frame, Close):
        return encodeClose(frame.code, frame.reason, frame.retryAfter)
    if isinstance(frame, Hello):
        return encodeHello(frame)
    if isinstance(frame, Ack):
        return encodeAck(frame.received)
    return _frame(frame.type, frame.payload, frame.flags)


def _parseHello(payload: bytes) -> Hello:
    if len(payload) < _HELLO_FIXED.size:
        raise RemoteProtocolError(f"HELLO payload is {len(payload)} bytes, needs at least 13")
    version, intervalMs, timeoutMs, maxFrame = _HELLO_FIXED.unpack_from(payload)
    clientId: str | None = None
    token: bytes | None = None
    session: bytes | None = None
    received: int | None = None
    seen: set[int] = set()
    offset = _HELLO_FIXED.size
    while offset < len(payload):
        if offset + _TLV.size > len(payload):
            raise RemoteProtocolError("HELLO field header truncated")
        tag, size = _TLV.unpack_from(payload, offset)
        offset += _TLV.size
        value = payload[offset : offset + size]
        if len(value) != size:
            raise RemoteProtocolError(f"HELLO field 0x{tag:02x} truncated")
        offset += size
        if tag in seen:
            raise RemoteProtocolError(f"HELLO field 0x{tag:02x} repeated")
        seen.add(tag)
        if tag == HelloField.CLIENT_ID:
            if size > MAX_FIELD_BYTES:
                raise RemoteProtocolError("HELLO client id longer than 255 bytes")
            try:
                clientId = value.decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteProtocolError("HELLO client id is not UTF-8") from None
        elif tag == HelloField.TOKEN:
            if size > MAX_FIELD_BYTES:
                raise RemoteProtocolError("HELLO token longer than 255 bytes")
            token = value
        elif tag == HelloField.SESSION:
            if size not in (0, SESSION_ID_BYTES):
                raise RemoteProtocolError(f"HELLO session id is {size} bytes, not 0 or 16")
            session = value
        elif tag == HelloField.RECEIVED:
            if size != 8:
                raise RemoteProtocolError(f"HELLO received field is {size} bytes, not 8")
            received = _U64.unpack(value)[0]
        # Unknown tags are skipped: that is how later versions extend HELLO.
    if maxFrame < MIN_MAX_FRAME:
        raise RemoteProtocolError(f"HELLO max_frame {maxFrame} is below {MIN_MAX_FRAME}")
    if (session is None) != (received is None):
        raise RemoteProtocolError("HELLO session and received fields come together")
    return Hello(
        version, intervalMs / 1000, timeoutMs / 1000, maxFrame, clientId, token, session, received
    )


def parseFrame(ftype: int, flags: int, payload: bytes) -> Frame:
    """
    Turn one decoded frame into a frame object.

    @raise RemoteProtocolError: the payload does not fit the type, or the
        type is an unknown critical one.
    """
    if ftype == FrameType.DATA:
        return Data(payload)
    if ftype in (FrameType.PING, FrameType.PONG):
        if len(payload) != _PING.size:
            name = FrameType(ftype).name
            raise RemoteProtocolError(f"{name} payload is {len(payload)} bytes, must be 12")
        pingId, timestamp = _PING.unpack(payload)
        return Ping(pingId, timestamp) if ftype == FrameType.PING else Pong(pingId, timestamp)
    if ftype == FrameType.CLOSE:
        if len(payload) < _CLOSE_FIXED.size:
            raise RemoteProtocolError(f"CLOSE payload is {len(payload)} bytes, needs at least 6")
        code, hint = _CLOSE_FIXED.unpack_from(payload)
        reason = payload[_CLOSE_FIXED.size :].decode("utf-8", "replace")
        return Close(code, reason, None if hint == NO_RETRY_HINT else hint / 1000)
    if ftype == FrameType.HELLO:
        return _parseHello(payload)
    if ftype == FrameType.ACK:
        if len(payload) != 8:
            raise RemoteProtocolError(f"ACK payload is {len(payload)} bytes, must be 8")
        return Ack(_U64.unpack(payload)[0])
    if ftype >= EXTENSION_TYPE_MIN:
        return Extension(ftype, flags, payload)
    raise RemoteProtocolError(f"unknown frame type 0x{ftype:02x}")


def _first(n: int, chunks: list[bytes | memoryview], data: bytes) -> bytes | memoryview:
    """The first C{n} bytes of the chunks followed by C{data} (n is small)."""
    if len(chunks[0]) >= n:
        return chunks[0]
    out = b""
    for chunk in [*chunks, data]:
        out += bytes(chunk[: n - len(out)])
        if len(out) >= n:
            break
    return out


class FrameDecoder:
    """
    Incremental decoder: feed it bytes as they arrive, get whole frames out.

    A frame whose length field exceeds L{maxFrame} is refused from its
    header alone, before any of its payload is buffered, so memory stays
    bounded by C{maxFrame + chunk size}.  L{maxFrame} may be changed between
    frames (the handshake raises it).
    """

    __slots__ = ("_chunks", "_filled", "_gathered", "_need", "_size", "ack", "maxFrame", "seq")

    def __init__(self, maxFrame: int = DEFAULT_MAX_FRAME) -> None:
        self._chunks: list[bytes | memoryview] = []
        self._gathered: bytearray | None = None
        self._filled = 0
        self._size = 0
        # Bytes needed before anything can be decoded: a header, or the rest
        # of a frame whose header was read.  Chunks are only joined once this
        # many have arrived, so a large frame costs one copy, not one per read.
        self._need = HEADER_SIZE
        self.maxFrame = maxFrame
        #: With C{split}: the sequence number of the session DATA frame
        #: L{feed} just yielded (L{frames} yields it instead), and its ACK
        #: (valid when its flags have L{DATA_ACK}).
        self.seq = 0
        self.ack: int | None = None

    @property
    def buffered(self) -> int:
        """
        Bytes received but not yet part of a whole frame.
        """
        return self._size

    def _checkLength(self) -> None:
        head = self._chunks[0] if len(self._chunks[0]) >= 4 else b"".join(self._chunks)
        length = _LENGTH.unpack_from(head)[0]
        if length < 2:
            raise RemoteProtocolError(f"bad frame length {length} (minimum is 2)")
        if length > self.maxFrame:
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds the limit of {self.maxFrame}",
                CloseCode.FRAME_TOO_LARGE,
            )

    def _completeHeld(self, data: bytes, split: bool) -> tuple[int, int, bytes, int, int] | None:
        """
        The frame begun in the chunks held, completed from the start of
        C{data}: C{(type, flags, payload, bytes of data used)}, or L{None}
        if C{data} does not complete it (then kept, uncopied).
        """
        chunks = self._chunks
        held = self._size - len(data)
        if held >= HEADER_SIZE and len(chunks[0]) >= HEADER_SIZE:
            head: bytes | memoryview = chunks[0]
        else:
            head = b"".join(chunks)[:HEADER_SIZE]
            if len(head) < HEADER_SIZE:
                head = head + data[: HEADER_SIZE - len(head)]
        length, ftype, flags = _HEADER.unpack_from(head)
        if length < 2:
            raise RemoteProtocolError(f"bad frame length {length} (minimum is 2)")
        if length > self.maxFrame:
            raise RemoteProtocolError(
                f"frame of {length} bytes exceeds the limit of {self.maxFrame}",
                CloseCode.FRAME_TOO_LARGE,
            )
        total = 4 + length
        if self._size < total:
            chunks.append(data)
            self._need = total
            return None
        take = total - held
        skip = HEADER_SIZE
        seq = 0
        if split and ftype == FrameType.DATA and flags & DATA_SEQ:
            # Read the sequence number (and ACK) here and copy the message
            # alone: a large message is then copied once, not twice.
            prefix = 16 if flags & DATA_ACK else 8
            if length - 2 < prefix:
                raise RemoteProtocolError(f"DATA with these flags needs at least {prefix} bytes")
            head = _first(HEADER_SIZE + prefix, chunks, data)
            if prefix == 16:
                seq, self.ack = _U64U64.unpack_from(head, HEADER_SIZE)
            else:
                seq = _U64.unpack_from(head, HEADER_SIZE)[0]
            skip += prefix
        parts: list[bytes | memoryview] = []
        for chunk in chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            parts.append(memoryview(chunk)[skip:] if skip else chunk)
            skip = 0
        tail = memoryview(data)[skip:take] if take < len(data) or skip else data
        if len(tail):
            parts.append(tail)
        payload = b"".join(parts)
        self._size -= total
        self._need = HEADER_SIZE
        return ftype, flags, payload, seq, take

    def feed(self, data: bytes, split: bool = False) -> Iterator[tuple[int, int, bytes]]:
        """
        Add C{data} and yield each complete frame as C{(type, flags, payload)}.

        The generator is lazy and must be consumed before the next call:
        L{maxFrame} is read afresh for each frame.

        @param split: a session's DATA frame (L{DATA_SEQ}) is yielded with
            the message alone as its payload, its sequence number in
            L{seq} (and its ACK in L{ack}, valid only when the flags have
            L{DATA_ACK}) until the next frame.

        @raise RemoteProtocolError: a length field below 2 or above
            L{maxFrame}.  The decoder is then unusable.
        """
        for ftype, flags, payload, seq in self.frames(data, split):
            if flags & DATA_SEQ:
                self.seq = seq
            yield ftype, flags, payload

    def frames(self, data: bytes, split: bool = True) -> Iterator[tuple[int, int, bytes, int]]:
        """
        L{feed} for the engine's data path: C{(type, flags, payload, seq)},
        with C{split} a session DATA frame's message alone and its
        sequence number (meaningless for other frames): one copy of the
        message instead of two, and no attribute written per frame.
        """
        self._size += len(data)
        if self._size < self._need:
            if data:
                chunks = self._chunks
                chunks.append(data)
                if len(chunks) > _MAX_CHUNKS and self._size < len(chunks) * _SMALL_CHUNK:
                    # A peer trickling bytes one at a time: each read is an
                    # object of its own (33 bytes for one byte of data), so
                    # small reads are gathered into one growing buffer, and
                    # what is held stays close to what was sent.  Large
                    # reads (a big frame arriving) are left alone: one copy.
                    # The buffer is filled in place, allocated at the
                    # frame's size (known by now) for a small frame and
                    # doubling (never past that size) for a large one:
                    # grown at every read, it would leave the allocator a
                    # trail of freed blocks (measured: 27 KiB of RSS per
                    # connection for a 4 KiB HELLO, 7 KiB allocated at
                    # once); a large frame must not cost more than twice
                    # what the peer sent.
                    gathered = self._gathered
                    if gathered is None:
                        pos, todo = 0, chunks
                    else:
                        pos, todo = self._filled, chunks[1:]
                    if gathered is None or self._size > len(gathered):
                        final = max(self._need, self._size)
                        grown = bytearray(
                            final if final <= _SMALL_FRAME else max(2 * self._size, _SMALL_FRAME)
                        )
                        if gathered is not None:
                            grown[:pos] = memoryview(gathered)[:pos]
                        gathered = self._gathered = grown
                    for chunk in todo:
                        end = pos + len(chunk)
                        gathered[pos:end] = chunk
                        pos = end
                    self._filled = pos
                    self._chunks = [memoryview(gathered)[:pos]]
                if self._need == HEADER_SIZE and self._size >= 4:
                    self._checkLength()
            return
        offset = 0
        if self._chunks:
            # A frame (or its header) was begun in earlier reads: complete
            # it alone, with one copy of its payload, and read the rest of
            # C{data} in place (joining everything held with all of C{data}
            # would copy each large frame four times: measured in
            # bench/datapath.py, 64 KiB row).
            first = self._completeHeld(data, split)
            if first is None:
                return  # still incomplete: held, nothing copied
            ftype, flags, payload, seq, offset = first
            self._chunks = []
            self._gathered = None
            yield ftype, flags, payload, seq
        buf = data
        end = len(buf)
        need = HEADER_SIZE
        unpack = _HEADER.unpack_from
        unpackSeq = _U64.unpack_from
        seq = 0
        try:
            while end - offset >= HEADER_SIZE:
                length, ftype, flags = unpack(buf, offset)
                if length > self.maxFrame:
                    raise RemoteProtocolError(
                        f"frame of {length} bytes exceeds the limit of {self.maxFrame}",
                        CloseCode.FRAME_TOO_LARGE,
                    )
                if length < 2:
                    raise RemoteProtocolError(f"bad frame length {length} (minimum is 2)")
                stop = offset + 4 + length
                if stop > end:
                    need = 4 + length
                    break
                start = offset + HEADER_SIZE
                if flags and split and ftype == 4 and flags & DATA_SEQ:
                    if flags & DATA_ACK:
                        if length < 18:
                            raise RemoteProtocolError("DATA with SEQ and ACK needs 16 bytes")
                        seq, self.ack = _U64U64.unpack_from(buf, start)
                        start += 16
                    else:
                        if length < 10:
                            raise RemoteProtocolError("DATA with SEQ needs at least 8 bytes")
                        seq = unpackSeq(buf, start)[0]
                        start += 8
                payload = buf[start:stop]
                offset = stop
                yield ftype, flags, payload, seq
            else:
                need = HEADER_SIZE
                if end - offset >= 4 and _LENGTH.unpack_from(buf, offset)[0] < 2:
                    # A complete frame of length 0 or 1: no need to wait for
                    # a type byte that is not part of it.
                    raise RemoteProtocolError(
                        f"bad frame length {_LENGTH.unpack_from(buf, offset)[0]} (minimum is 2)"
                    )
        finally:
            self._gathered = None
            left = end - offset
            if not left:
                self._chunks = []
            elif not offset:
                self._chunks = [buf]
            elif left > _SMALL_CHUNK:
                # The start of a large frame: a view, not a copy (it is
                # copied once, into its payload, when complete).
                self._chunks = [memoryview(buf)[offset:]]
            else:
                self._chunks = [buf[offset:]]
            self._size = left
            self._need = need
