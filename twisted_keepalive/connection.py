"""
The protocol engine, free of I/O: bytes and timestamps in, events and bytes
out, in the manner of h11's C{Connection}.

L{KeepaliveConnection.receive} returns a list of events.  An application
message is returned as plain L{bytes} (the most frequent event costs no
wrapper object); everything else is one of the event classes below.  Bytes
to write accumulate in an outbox drained by L{KeepaliveConnection.dataToSend}.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .config import HeartbeatConfig
from .errors import CloseCode, LocalProtocolError, MessageTooLarge, RemoteProtocolError
from .frames import (
    DATA_ACK,
    DATA_SEQ,
    EXTENSION_TYPE_MIN,
    HANDSHAKE_MAX_FRAME,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SESSION_ID_BYTES,
    SESSION_VERSION,
    Ack,
    Close,
    FrameDecoder,
    FrameType,
    Hello,
    Pong,
    encodeAck,
    encodeClose,
    encodeHello,
    encodePing,
    encodeSequenced,
    parseFrame,
)
from .liveness import Liveness, Verdict
from .rtt import RTTEstimator
from .session import Session

_packHeader = struct.Struct(">IBB").pack
_PONG_HEADER = _packHeader(14, FrameType.PONG, 0)
_PING_HEADER = _packHeader(14, FrameType.PING, 0)
_unpackSeq = struct.Struct(">Q").unpack_from


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class State(Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


_OPEN = State.OPEN


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """
    Both HELLOs have been exchanged; messages may flow.

    @ivar peer: the peer's HELLO.
    @ivar interval: the negotiated ping interval (seconds).
    @ivar timeout: our dead-peer bound after negotiation (seconds).
    """

    peer: Hello
    version: int
    interval: float
    timeout: float


@dataclass(frozen=True, slots=True)
class PongReceived:
    rtt: float
    #: Seconds nothing went either way before the PING it answers was sent.
    idle: float = 0.0


@dataclass(frozen=True, slots=True)
class PingReceived:
    """
    The peer pinged; the PONG is already in the outbox.  Servers use this to
    enforce a ping rate.

    @ivar gap: seconds since the peer's previous PING (L{None} for the
        first): carried by the event, since several PINGs can arrive in one
        read and each must be judged on its own gap.
    """

    at: float
    gap: float | None = None


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int
    reason: str
    retryAfter: float | None


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """
    The handshake attached a session (protocol version 2).

    @ivar resumed: an existing session continues (C{replayed} messages were
        sent again); otherwise a new one starts.
    """

    session: Session
    resumed: bool
    replayed: int


@dataclass(frozen=True, slots=True)
class SessionLost:
    """
    The peer does not have our session (a server past its grace period, or
    another server, or one without sessions): C{undelivered} were written
    and never acknowledged, and are not sent again.
    """

    undelivered: list[bytes]
    reason: str


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """
    A message stored while disconnected turned out, at the handshake, to
    exceed the peer's frame limit: taken out of the session (the peer sees
    a gap), never written; its receipt failed with L{MessageTooLarge}.
    """

    message: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolFailed:
    """
    The peer broke the protocol; always the last event of a batch.
    """

    error: RemoteProtocolError


Event = (
    bytes
    | HandshakeCompleted
    | SessionStarted
    | SessionLost
    | MessageRefused
    | PongReceived
    | PingReceived
    | CloseReceived
    | ProtocolFailed
)

#: Server side: C{sessionFor(hello)} returns the session to attach (the one
#: the HELLO names if it is kept and the HELLO may resume it, else a new
#: one) and whether it resumes; L{None}: this server keeps no sessions.  It
#: raises L{RemoteProtocolError}, changing nothing, for a resume it refuses
#: (another owner, an acknowledgement of messages never sent).
SessionProvider = Callable[[Hello], tuple[Session, bool] | None]

#: L{SessionLost} reasons.
NO_SESSIONS = "the server does not keep sessions"
SESSION_GONE = "the server no longer has the session"

#: DATA in a session carries a sequence number and maybe an ACK: the most a
#: message may be, below the peer's frame limit.
SESSION_OVERHEAD = 18

#: Pings whose PONG is awaited are kept to check each PONG and time it.  The
#: timeout bounds how many can be outstanding; this caps it regardless.
MAX_OUTSTANDING_PINGS = 64


class KeepaliveConnection:
    """
    One side of one connection.

    @ivar liveness: the timestamps the timer reads; set up at construction
        with no ping and no timeout, armed by the handshake.
    """

    __slots__ = (
        "_decoder",
        "_forgottenPings",
        "_lastPingAt",
        "_nextPingId",
        "_outbox",
        "_outstanding",
        "_partialSince",
        "bytesIn",
        "bytesOut",
        "config",
        "connectedAt",
        "controlIn",
        "controlOut",
        "fastLimit",
        "handshakeAt",
        "interval",
        "liveness",
        "messagesIn",
        "messagesOut",
        "peerHello",
        "peerMaxFrame",
        "pingGap",
        "pingsReceived",
        "pingsSent",
        "pongsReceived",
        "role",
        "rtt",
        "session",
        "sessionFor",
        "state",
        "version",
    )

    def __init__(self, role: Role, config: HeartbeatConfig, now: float) -> None:
        self.role = role
        self.config = config
        self.state = State.HANDSHAKING
        self.version: int | None = None
        self.interval: float | None = None  # negotiated, both roles
        self.peerHello: Hello | None = None
        self.peerMaxFrame = HANDSHAKE_MAX_FRAME
        self.fastLimit = -1  # see HeartbeatProtocol.sendMessage
        self.liveness = Liveness(None, None, now)
        self.rtt = RTTEstimator()
        self.connectedAt = now
        self.handshakeAt: float | None = None
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        # Empty tuples until first used: most connections are idle, and an
        # empty list costs 56 bytes each (bench/idle_fleet.py).
        self._outbox: list[bytes] | tuple[()] = ()
        # A list, not a deque: usually 0-1 entries, and a deque costs ~600
        # bytes per connection (bench/idle_fleet.py measures memory).
        self._outstanding: list[tuple[int, float, int, float]] | tuple[()] = ()
        self._nextPingId = 1
        # Pings dropped from _outstanding by its cap (a peer we did not read
        # for a long time): their PONGs are still owed and are let through.
        self._forgottenPings = 0
        # Frames are counted as messages plus control frames, so the hot
        # path updates one counter less per message.
        self.controlIn = self.controlOut = 0
        self.bytesIn = self.bytesOut = 0
        self.messagesIn = self.messagesOut = 0
        self.pingsSent = self.pongsReceived = self.pingsReceived = 0
        # Seconds between the last two PINGs received (None before two):
        # servers police the ping rate with it.
        self.pingGap: float | None = None
        # Client: the session to offer (set before initiate); server: where
        # sessions come from.  After the handshake C{session} is the one in
        # use on this connection, or None (no sequence numbers).
        self.session: Session | None = None
        self.sessionFor: SessionProvider | None = None
        self._lastPingAt: float | None = None
        # When the frame now half-received began: trickled bytes of one
        # frame prove nothing past its start (see receive).
        self._partialSince = now

    @property
    def isClosed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def framesIn(self) -> int:
        return self.messagesIn + self.controlIn

    @property
    def framesOut(self) -> int:
        return self.messagesOut + self.controlOut

    # Output

    def _emit(self, frame: bytes, now: float) -> None:
        if self._outbox:
            self._outbox.append(frame)
        else:
            self._outbox = [frame]
        self.controlOut += 1
        self.bytesOut += len(frame)
        self.liveness.lastSent = now

    @property
    def hasOutput(self) -> bool:
        """
        Whether L{dataToSend} has anything; cheap enough to ask per read.
        """
        return bool(self._outbox)

    def dataToSend(self) -> bytes:
        """
        Drain the outbox.
        """
        if not self._outbox:
            return b""
        data = b"".join(self._outbox)
        self._outbox = ()
        return data

    def initiate(self, now: float) -> None:
        """
        Put the client's HELLO in the outbox.
        """
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only a client initiates the handshake")
        cfg = self.config
        session = self.session
        hello = Hello(
            PROTOCOL_VERSION,
            cfg.interval,
            cfg.timeout,
            cfg.maxFrame,
            cfg.clientId,
            cfg.token,
            None if session is None else session.id,
            None if session is None else session.received,
        )
        self._emit(encodeHello(hello), now)

    def encodeMessage(self, payload: bytes, now: float, receipt: Any = None) -> bytes:
        """
        Frame one application message, for the caller to write.

        @param receipt: in a session, settled (L{Session.settled}) when the
            peer acknowledges the message; ignored without a session.
        @raise LocalProtocolError: the connection is not open, or the message
            exceeds what the peer accepts.
        """
        length = len(payload) + 2
        if self.state is not _OPEN or length > self.peerMaxFrame:
            if self.state is not _OPEN:
                raise LocalProtocolError(f"cannot send: connection is {self.state.value}")
            raise LocalProtocolError(
                f"message of {len(payload)} bytes exceeds the peer's limit of "
                f"{self.peerMaxFrame - 2}"
            )
        if self.session is not None:
            return self._sequenced(payload, now, receipt)
        return self._plainFrame(payload, now)

    def _plainFrame(self, payload: bytes, now: float) -> bytes:
        length = len(payload) + 2
        self.bytesOut += length + 4
        self.messagesOut += 1
        self.liveness.lastSent = now
        return _packHeader(length, 4, 0) + payload  # encodeData, inlined

    def _sequenced(self, payload: bytes, now: float, receipt: Any = None) -> bytes:
        """
        Store, number and frame a message of a session; an acknowledgement
        we owe rides along.  Empty if the overflow policy dropped it.

        @raise QueueFull: the retransmit buffer is full (policy RAISE).
        """
        session = self.session
        assert session is not None
        if len(payload) + SESSION_OVERHEAD > self.peerMaxFrame:
            raise LocalProtocolError(
                f"message of {len(payload)} bytes exceeds the peer's limit of "
                f"{self.peerMaxFrame - SESSION_OVERHEAD} in a session"
            )
        seq = session.store(payload, receipt)
        if seq is None:
            return b""
        return self._frameStored(seq, payload, now)

    def _frameStored(self, seq: int, payload: bytes, now: float) -> bytes:
        session = self.session
        assert session is not None
        session.sent = seq
        if session.pendingAcks:
            session.pendingAcks = 0
            frame = encodeSequenced(seq, payload, session.received)
        else:
            frame = encodeSequenced(seq, payload)
        self.bytesOut += len(frame)
        self.messagesOut += 1
        self.liveness.lastSent = now
        return frame

    def flushAck(self, now: float) -> None:
        """
        Put an ACK in the outbox if we owe one (the shell's ack timer).
        """
        session = self.session
        if session is not None and session.pendingAcks and self.state is _OPEN:
            session.pendingAcks = 0
            self._emit(encodeAck(session.received), now)

    @property
    def owesAck(self) -> bool:
        """Messages were delivered that the peer has not heard we have."""
        return self.session is not None and self.session.pendingAcks > 0

    def close(self, code: int, reason: str, retryAfter: float | None, now: float) -> None:
        """
        Put a CLOSE in the outbox (unless already closed) and stop.
        """
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._emit(encodeClose(code, reason, retryAfter), now)

    # Timer

    def tick(self, now: float) -> Verdict:
        """
        The timer fired: decide, and put a PING in the outbox if one is due.
        """
        if self.state is not State.OPEN:
            return Verdict.IDLE
        verdict = self.liveness.check(now)
        if verdict is Verdict.PING:
            self._ping(now)
        return verdict

    @property
    def unansweredIdle(self) -> float | None:
        """
        The silence before the newest PING still unanswered, or L{None}: what
        an adaptive interval learns from when the path dies.
        """
        return self._outstanding[-1][3] if self._outstanding else None

    def _ping(self, now: float) -> None:
        pingId = self._nextPingId
        self._nextPingId = (pingId + 1) & 0xFFFFFFFF or 1
        stamp = int(now * 1_000_000) & 0xFFFFFFFFFFFFFFFF
        if len(self._outstanding) >= MAX_OUTSTANDING_PINGS:
            del self._outstanding[0]  # type: ignore[union-attr]
            self._forgottenPings += 1
        liveness = self.liveness
        last = (
            liveness.lastSent
            if liveness.lastSent > liveness.lastReceived
            else (liveness.lastReceived)
        )
        entry = (pingId, now, stamp, now - last)
        if self._outstanding:
            self._outstanding.append(entry)
        else:
            self._outstanding = [entry]
        self._emit(encodePing(pingId, stamp), now)
        self.liveness.pingSent(now)
        self.pingsSent += 1

    # Input

    def receive(self, data: bytes, now: float) -> list[Event]:
        """
        Feed bytes from the peer.

        If the peer broke the protocol, the events decoded before the fault
        are returned followed by a L{ProtocolFailed}; the state is then
        L{State.CLOSED} and a CLOSE with the error's code is in the outbox,
        for the caller to flush before dropping the connection.  Nothing the
        peer sent in good order before the fault is lost.
        """
        if self.state is State.CLOSED or not data:
            return []
        self.liveness.lastReceived = now
        self.bytesIn += len(data)
        if (
            data[:6] == _PING_HEADER
            and len(data) == 18
            and self.state is _OPEN
            and not self._decoder.buffered
        ):
            # One whole PING and nothing else: what an idle link reads.
            return [PingReceived(now, self._answerPing(data[6:], now))]
        events: list[Event] = []
        append = events.append
        isOpen = self.state is _OPEN
        messages = 0
        decoder = self._decoder
        before = decoder._size
        # In a session, in-order messages only move two counters: kept in
        # locals through the read and written back once (before anything
        # else reads them: a control frame, a gap, the end of the read).
        session = self.session
        received = session.received if session is not None else 0
        fresh = 0
        try:
            for ftype, flags, payload, seq in decoder.frames(data):
                if ftype == 4 and isOpen:  # DATA, the hot path
                    if flags and flags & DATA_SEQ:
                        # The decoder split off the sequence number (and ACK).
                        if session is None:
                            raise RemoteProtocolError(
                                "DATA with a sequence number outside a session"
                            )
                        if flags & DATA_ACK:
                            session.acknowledge(decoder.ack)  # type: ignore[arg-type]
                        if seq == received + 1:
                            received = seq
                            fresh += 1
                        else:
                            if fresh:
                                session.received = received
                                session.pendingAcks += fresh
                                fresh = 0
                            if not session.accept(seq):
                                continue  # a duplicate from a replay
                            received = session.received
                    messages += 1
                    append(payload)
                    continue
                if fresh:
                    assert session is not None
                    session.received = received
                    session.pendingAcks += fresh
                    fresh = 0
                if ftype == 2 and isOpen and len(payload) == 12:
                    # PING, the idle path (bench/idle_fleet.py): the PONG
                    # echoes the PING's payload, so nothing is parsed.
                    append(PingReceived(now, self._answerPing(payload, now)))
                    continue
                self.controlIn += 1
                self._control(ftype, flags, payload, now, events)
                if self.isClosed:
                    break
                isOpen = self.state is _OPEN
                session = self.session  # a handshake may have attached one
                received = session.received if session is not None else 0
        except RemoteProtocolError as e:
            self.close(e.code, str(e), getattr(e, "retryAfter", None), now)
            append(ProtocolFailed(e))
        if fresh:
            assert session is not None
            session.received = received
            session.pendingAcks += fresh
        after = decoder._size
        if after:
            # Part of a frame is held.  Bytes prove life only as whole
            # frames: the silence counts from the frame's first byte, so a
            # peer trickling bytes cannot hold a half-frame past the
            # timeout.  (No frame completed: it is the same frame as before.)
            if before == 0 or after < before + len(data):
                self._partialSince = now
            self.liveness.lastReceived = self._partialSince
        self.messagesIn += messages
        session = self.session
        if session is not None and session.pendingAcks >= self.config.ackEvery:
            self.flushAck(now)
        return events

    def _control(
        self, ftype: int, flags: int, payload: bytes, now: float, events: list[Event]
    ) -> None:
        frame = parseFrame(ftype, flags, payload)
        if isinstance(frame, Close):
            self.state = State.CLOSED
            events.append(CloseReceived(frame.code, frame.reason, frame.retryAfter))
            return
        if ftype >= EXTENSION_TYPE_MIN:
            return  # an extension we do not know: skipped, but it proved life
        if self.state is State.HANDSHAKING:
            if not isinstance(frame, Hello):
                raise RemoteProtocolError(
                    f"expected HELLO, got {FrameType(ftype).name} before the handshake"
                )
            self._handshake(frame, now, events)
            return
        # A well-formed PING was answered in receive; parseFrame rejected the rest.
        if isinstance(frame, Pong):
            answered = self._pong(frame, now)
            if answered is not None:
                events.append(PongReceived(*answered))
        elif isinstance(frame, Ack):
            if self.session is None:
                raise RemoteProtocolError("ACK outside a session")
            self.session.acknowledge(frame.received)
        elif isinstance(frame, Hello):
            raise RemoteProtocolError("HELLO received after the handshake")

    def receiveLonePing(self, data: bytes, now: float) -> float | None:
        """
        L{receive} for what an idle link reads: C{data} is exactly one
        PING (18 bytes starting with its header), the connection is open
        and nothing is half-received (the caller checked).  The PONG is put
        in the outbox; returns the gap since the previous PING.  No event
        objects: the shell calls its hooks directly (bench/idle_fleet.py).
        """
        self.liveness.lastReceived = now
        self.bytesIn += 18
        return self._answerPing(data[6:], now)

    def _answerPing(self, payload: bytes, now: float) -> float | None:
        self.controlIn += 1
        self.pingsReceived += 1
        last = self._lastPingAt
        self.pingGap = gap = None if last is None else now - last
        self._lastPingAt = now
        self._emit(_PONG_HEADER + payload, now)
        probe = self.config.rttProbeEvery
        if probe and self.role is Role.SERVER and self.pingsReceived % probe == 1 % probe:
            self._ping(now)  # a server measures RTT too, now and then
        return gap

    def _pong(self, pong: Pong, now: float) -> tuple[float, float] | None:
        if self._forgottenPings:
            # Answers come in order, so the first ones are for the pings the
            # cap forgot (nothing to time them against)...
            if not self._outstanding or pong.id != self._outstanding[0][0]:
                self._forgottenPings -= 1
                return None
            self._forgottenPings = 0  # ...unless the oldest remembered one is answered
        if not self._outstanding:
            raise RemoteProtocolError(f"PONG {pong.id} for a ping never sent")
        pingId, sentAt, stamp, idle = self._outstanding[0]
        if pong.id != pingId or pong.timestamp != stamp:
            raise RemoteProtocolError(
                f"PONG {pong.id} does not answer the oldest outstanding PING {pingId}"
            )
        del self._outstanding[0]
        self.liveness.lastPong = now
        rtt = max(0.0, now - sentAt)
        self.rtt.add(rtt)
        self.pongsReceived += 1
        return rtt, idle

    def _handshake(self, hello: Hello, now: float, events: list[Event]) -> None:
        cfg = self.config
        started: Event | None = None
        if hello.version < MIN_PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"protocol version {hello.version} unsupported "
                f"(this peer speaks {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION})",
                CloseCode.UNSUPPORTED_VERSION,
            )
        if hello.interval <= 0:
            raise RemoteProtocolError("HELLO interval must be positive")
        if self.role is Role.SERVER:
            if cfg.token is not None and not hmac.compare_digest(hello.token or b"", cfg.token):
                raise RemoteProtocolError("wrong or missing token", CloseCode.AUTH_FAILED)
            version = min(hello.version, PROTOCOL_VERSION)
            # The client's proposal, within our bounds: a client asking to
            # ping every millisecond is told the floor, and policed on it.
            interval = max(min(hello.interval, cfg.interval), cfg.serverMinInterval)
            timeout = cfg.timeout
            # The server answers pings and evicts the silent; it pings only to
            # sample the RTT (rttProbeEvery), never on a timer.
            self.liveness.timeout = timeout
            session: Session | None = None
            resumed = False
            self.peerMaxFrame = hello.maxFrame
            if (
                version >= SESSION_VERSION
                and hello.session is not None
                and hello.received is not None
                and self.sessionFor is not None
            ):
                if len(hello.session) != SESSION_ID_BYTES:
                    raise RemoteProtocolError("a client names its session with 16 bytes")
                # The provider validates a resume (and raises) before it
                # touches anything: a refused HELLO leaves no state behind.
                found = self.sessionFor(hello)
                if found is not None:
                    session, resumed = found
                    if resumed:
                        session.acknowledge(hello.received)
                    # A new session: whatever the client says it received
                    # belongs to one we do not have; it starts from 0.
            reply = Hello(
                version,
                interval,
                timeout,
                cfg.maxFrame,
                # The id again: resumed; empty: a new session under that id.
                session=None if session is None else session.id if resumed else b"",
                received=None if session is None else session.received,
            )
            self._emit(encodeHello(reply), now)
            if session is not None:
                self.session = session
                started = SessionStarted(session, resumed, self._replay(now, events))
        else:
            if hello.version > PROTOCOL_VERSION:
                raise RemoteProtocolError(
                    f"server chose protocol version {hello.version}, "
                    f"but this client offered {PROTOCOL_VERSION}",
                    CloseCode.UNSUPPORTED_VERSION,
                )
            version = hello.version
            interval = hello.interval
            low, high = cfg.acceptedIntervals
            if not low <= interval <= high:
                # A server cannot make us deaf (a huge interval scales our
                # timeout) nor busy (a tiny one): refuse, back off.
                raise RemoteProtocolError(
                    f"server imposes a ping interval of {interval:g}s, outside this "
                    f"client's bounds [{low:g}s, {high:g}s]"
                )
            timeout = cfg.timeout
            if interval > cfg.interval:
                # The server imposed a longer interval: keep the same number
                # of missed pings before declaring it dead (bounded by the
                # interval's bound: at most 4 x timeout by default).
                timeout = cfg.timeout * interval / cfg.interval
            self.liveness.interval = interval
            self.liveness.timeout = timeout
            self.liveness.requirePongs = cfg.requirePongs
            self.peerMaxFrame = hello.maxFrame
            started = self._clientSession(hello, now, events)
        self.version = version
        self.interval = interval
        self.peerHello = hello
        self.fastLimit = -1 if self.session is not None else hello.maxFrame
        self._decoder.maxFrame = cfg.maxFrame
        self.state = State.OPEN
        self.handshakeAt = now
        self.liveness.lastPing = self.liveness.lastPong = now
        events.append(HandshakeCompleted(hello, version, interval, timeout))
        if started is not None:
            events.append(started)

    def _clientSession(self, hello: Hello, now: float, events: list[Event]) -> Event | None:
        """
        The client's side of the session handshake: adopt, resume or restart
        the session the server named, and queue what must be sent again.
        """
        session = self.session
        if session is None:
            return None
        if hello.session is None or hello.received is None:
            # A server without sessions: what was written is unconfirmed;
            # what never was goes out as plain messages on this connection.
            why = NO_SESSIONS
            lost = session.restart(why)  # what is left was never written
            self.session = None
            _refuseOversized(session, self.peerMaxFrame - 2, events)
            outbox = self._outbox = list(self._outbox)
            outbox.extend(self._plainFrame(m, now) for m in session.drain())
            events.append(SessionLost(lost, why))
            return None
        if hello.session not in (b"", session.id):
            raise RemoteProtocolError("HELLO names another session than ours")
        resumed = hello.session == session.id
        if session.established and not resumed:
            why = SESSION_GONE
            lost = session.restart(why)
            events.append(SessionLost(lost, why))
        session.established = True
        session.acknowledge(hello.received)
        return SessionStarted(session, resumed, self._replay(now, events))

    def _replay(self, now: float, events: list[Event]) -> int:
        """
        A session (re)starts on this connection: write everything the peer
        has not acknowledged, in order.  A message over the peer's frame
        limit (stored before we knew it) is refused rather than written:
        written, it would close the connection, and the replay would
        repeat forever.  Returns how many had been written before
        (replayed, as opposed to stored while disconnected).
        """
        session = self.session
        assert session is not None
        previouslySent = session.sent
        session.rewind()
        replayed = 0
        _refuseOversized(session, self.peerMaxFrame - SESSION_OVERHEAD, events)
        outbox = self._outbox = list(self._outbox)
        for seq, message in list(session.unsent()):
            outbox.append(self._frameStored(seq, message, now))
            if seq <= previouslySent:
                replayed += 1
        return replayed


def _refuseOversized(session: Session, limit: int, events: list[Event]) -> None:
    """
    Take out of C{session} every message still to be written that is over
    C{limit} (stored before the peer's frame limit was known): written, it
    would close the connection, at every reconnection.
    """
    for seq, message in list(session.unsent()):
        if len(message) > limit:
            why = f"message of {len(message)} bytes exceeds the peer's limit of {limit}"
            session.refuse(seq, MessageTooLarge(message, why))
            events.append(MessageRefused(message, why))
