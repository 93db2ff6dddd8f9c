"""
Foreign-protocol mode: keep alive a connection to a server that does not
speak our protocol (a database, a cache, a line-based service).

We write configurable ping bytes when the link is idle.  With an expected
reply pattern, any inbound byte proves life, the peer is dead after
C{timeout} of silence, and each match of the pattern times one round trip.
Without one the heartbeat is one-way: it keeps NATs and the peer's idle
timers fed, and dead-peer detection rests on write errors and the kernel's
TCP_USER_TIMEOUT (set C{tcpKeepalive}).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from .errors import HeartbeatTimeout
from .heartbeat import describePeer, maybeGlobalReactor
from .liveness import Liveness, Verdict
from .rtt import RTTEstimator
from .tcp import TCPKeepalive, applyTCPKeepalive, findSocket
from .timer import IdleTimer

#: How much recent input is kept to match the reply pattern against.
MATCH_WINDOW = 4096


def abortSilent(protocol: Any, liveness: Liveness, now: float, timeout: float) -> HeartbeatTimeout:
    """
    The peer of C{protocol} (a raw or wrapping heartbeat) was silent past
    C{timeout}: say so in one line and abort; the reason to report.
    """
    silence = liveness.silence(now)
    protocol.log.warn(
        "No data from {peer} for {silence:.3f}s (timeout {timeout}s); aborting",
        peer=protocol.peer,
        silence=silence,
        timeout=timeout,
    )
    protocol.transport.abortConnection()
    return HeartbeatTimeout(silence, timeout)


def unescape(text: str) -> bytes:
    r"""
    Turn C{"PING\r\n"} as typed on a command line into bytes.
    """
    try:
        return text.encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError) as e:
        raise ValueError(f"cannot decode escapes in {text!r}: {e}") from None


@dataclass(frozen=True)
class RawHeartbeatConfig:
    """
    @ivar ping: the bytes written when the link is idle.
    @ivar expect: a bytes regular expression matching the peer's reply, or
        L{None} for a one-way heartbeat.
    @ivar interval: seconds without writing before a ping is sent.
    @ivar timeout: with C{expect}, seconds of inbound silence before the
        peer is declared dead.  Ignored without C{expect}.
    """

    ping: bytes = b"PING\r\n"
    expect: bytes | None = None
    interval: float = 10.0
    timeout: float = 30.0
    tcpKeepalive: TCPKeepalive | None = None

    def __post_init__(self) -> None:
        if not self.ping:
            raise ValueError("the raw ping must not be empty")
        if not self.interval > 0:
            raise ValueError(f"interval must be positive, not {self.interval!r}")
        if self.expect is not None:
            if not self.timeout > self.interval:
                raise ValueError(
                    f"timeout ({self.timeout:g}s) must be longer than interval ({self.interval:g}s)"
                )
            try:
                re.compile(self.expect)
            except re.error as e:
                raise ValueError(f"bad reply pattern {self.expect!r}: {e}") from None


class RawHeartbeatProtocol(Protocol):
    """
    Heartbeats for a foreign protocol.  Subclass and override
    L{rawDataReceived}; write with L{sendRaw} so that application writes
    count as activity (writing to C{transport} directly also works, but then
    pings are sent even while you write).

    @ivar rtt: round trips measured from ping to reply match.
    @ivar closeReason: as for L{HeartbeatProtocol}.
    """

    log = Logger()
    closeReason: Failure | None = None

    def __init__(self, config: RawHeartbeatConfig, clock: IReactorTime | None = None) -> None:
        self.rawConfig = config
        self._pattern = re.compile(config.expect) if config.expect is not None else None
        self._clock = clock
        self._window = b""
        self._unanswered: deque[float] = deque(maxlen=64)
        self._reason: Exception | None = None
        self._timer: IdleTimer | None = None
        self.rtt = RTTEstimator()
        self.pingsSent = 0
        self.repliesMatched = 0
        self.peer = "unknown peer"
        self._open = False

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            self._clock = maybeGlobalReactor(getattr(self.factory, "clock", None))
        return self._clock

    def connectionMade(self) -> None:
        cfg = self.rawConfig
        self.peer = describePeer(self.transport)
        if cfg.tcpKeepalive is not None:
            sock = findSocket(self.transport)
            if sock is not None:
                applyTCPKeepalive(sock, cfg.tcpKeepalive)
        oneWay = self._pattern is None
        self.liveness = Liveness(
            cfg.interval,
            None if oneWay else cfg.timeout,
            self.clock.seconds(),
            probeSilence=not oneWay,
        )
        self._timer = IdleTimer(self.clock, self.liveness, self._onTimer)
        self._timer.start()
        self._open = True
        # No handshake in a foreign protocol: ready as soon as connected.
        notify = getattr(self.factory, "heartbeatConnectionReady", None)
        if notify is not None:
            notify(self)

    def dataReceived(self, data: bytes) -> None:
        now = self.clock.seconds()
        self.liveness.lastReceived = now
        if self._pattern is not None and self._unanswered:
            window = (self._window + data)[-MATCH_WINDOW:]
            match = self._pattern.search(window)
            matched = None
            if match is not None:
                matched = max(0.0, now - self._unanswered.popleft())
                self.rtt.add(matched)
                self.repliesMatched += 1
                window = window[match.end() :]
            self._window = window
            if matched is not None:
                self.pongReceived(matched)
        self.rawDataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._open = False
        if self._reason is not None:
            reason = Failure(self._reason)
        self.closeReason = reason
        self.connectionClosed(reason)
        notify = getattr(self.factory, "heartbeatConnectionLost", None)
        if notify is not None:
            notify(self, reason)

    def rawDataReceived(self, data: bytes) -> None:
        """
        Bytes from the peer, replies to our pings included.
        """

    def pongReceived(self, rtt: float) -> None:
        """
        The reply pattern matched; C{rtt} is this round trip in seconds (as
        L{HeartbeatProtocol.pongReceived}).
        """

    def connectionClosed(self, reason: Failure) -> None:
        """
        The connection is gone.
        """

    def sendRaw(self, data: bytes) -> None:
        self.liveness.lastSent = self.clock.seconds()
        self.transport.write(data)  # type: ignore[union-attr]

    # The interface KeepaliveClientFactory uses, shared with HeartbeatProtocol.

    @property
    def isOpen(self) -> bool:
        return self._open

    def sendMessage(self, message: bytes) -> None:
        """
        Write C{message} as it is (there is no framing in a foreign protocol).
        """
        self.sendRaw(message)

    def close(self, code: int = 1000, reason: str = "", retryAfter: float | None = None) -> None:
        """
        Close the connection (no CLOSE frame: the peer would not understand it).
        """
        self._open = False
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _onTimer(self, now: float) -> bool:
        verdict = self.liveness.check(now)
        if verdict is Verdict.DEAD:
            self._reason = abortSilent(self, self.liveness, now, self.rawConfig.timeout)
            return False
        if verdict is Verdict.PING:
            self.transport.write(self.rawConfig.ping)  # type: ignore[union-attr]
            self.liveness.pingSent(now)
            self.pingsSent += 1
            if self._pattern is not None:
                self._unanswered.append(now)
        return True
