"""
Heartbeat settings, validated once so that bad values fail where they are
written rather than later inside the reactor.
"""

from __future__ import annotations

from dataclasses import dataclass

from .frames import (
    DEFAULT_MAX_FRAME,
    MAX_FIELD_BYTES,
    MAX_WIRE_FRAME,
    MAX_WIRE_SECONDS,
    MIN_MAX_FRAME,
)
from .tcp import TCPKeepalive

#: A server's default floor on the ping interval it lets a client use
#: (never above its own C{interval}).
DEFAULT_MIN_INTERVAL = 0.1
#: A client accepts from a server an interval down to its own divided by
#: this, and up to its own multiplied by L{MAX_INTERVAL_FACTOR}, unless
#: C{minInterval} / C{maxInterval} say otherwise.
MIN_INTERVAL_DIVISOR = 100
MAX_INTERVAL_FACTOR = 4


@dataclass(frozen=True)
class HeartbeatConfig:
    """
    How one side of a connection heartbeats.  All times in seconds.

    @ivar interval: client: the ping interval it proposes (the server may
        bound it).  Server: the largest interval it lets a client use.
    @ivar timeout: inbound silence after which the peer is declared dead and
        the connection aborted.  Must exceed C{interval}; 2 to 3 times
        C{interval} tolerates one or two lost pings.  For a server this is
        the idle-eviction time.
    @ivar minInterval: server: the smallest interval a client may use;
        faster proposals are raised to it.  L{None}: the smaller of
        L{DEFAULT_MIN_INTERVAL} and C{interval}.  Client: the shortest
        interval it accepts from a server (L{None}: C{interval / 100}).
    @ivar maxInterval: client only: the longest interval it accepts from a
        server (L{None}: 4 x C{interval}).  An interval outside the
        client's bounds fails the handshake; within them, a longer one
        scales the dead-peer timeout in proportion (so at most 4 x
        C{timeout} by default): no server can make a client deaf.
    @ivar adaptiveInterval: client only: learn the longest idle gap the path
        survives (a NAT's timeout) and ping just inside it, up to this many
        seconds (L{AdaptiveInterval}; docs/tuning.md).  A dead peer is then
        detected within C{adaptiveInterval + timeout - interval}.  The
        server's idle timeout must allow it (the client never exceeds 80 %
        of the timeout the server announces).
    @ivar requirePongs: client only: the peer is alive only while it
        answers our PINGs.  PINGs go out every C{interval} whatever else
        flows, and the peer is declared dead C{timeout} after its last
        PONG (or the handshake), even if other bytes keep arriving.  For a
        server that may be wedged while its socket still trickles.
    @ivar handshakeTimeout: the HELLO exchange must finish within this.
    @ivar closeTimeout: after sending CLOSE, how long to wait for the
        transport to flush before aborting it.
    @ivar maxFrame: the largest frame (its length field) we accept.
    @ivar clientId: client only: an identifier sent in HELLO.
    @ivar token: a shared secret: a client sends it, a server requires it.
    @ivar tcpKeepalive: kernel-level keepalive for the socket, or L{None}.
    @ivar tcpNoDelay: turn Nagle's algorithm off (C{TCP_NODELAY}), as
        gRPC, Netty and MQTT brokers do: a small frame (a PONG, an ACK, a
        push) written while an earlier one awaits the peer's delayed ACK
        would otherwise wait up to 40 ms (measured: bench/cluster.py's
        push latency p99 went from 43 ms to under 1 ms).  Twisted already
        writes what one reactor turn produced in one send.
    @ivar rttProbeEvery: server only: also send a PING of our own after
        every this many client PINGs, to measure the RTT for the registry
        (the client answers it; 0 turns it off).
    @ivar maxPendingOutput: bytes we may write while the transport reports
        its buffer full (Twisted's producer API) before the peer is judged
        too slow and dropped with SLOW_CONSUMER; bounds memory per
        connection.
    @ivar ackEvery: in a session, acknowledge at the latest after this many
        messages received...
    @ivar ackDelay: ...or this many seconds after the first unacknowledged
        one, whichever comes first (an ACK also rides on any DATA we send).
    """

    interval: float = 10.0
    timeout: float = 30.0
    minInterval: float | None = None
    maxInterval: float | None = None
    adaptiveInterval: float | None = None
    requirePongs: bool = False
    handshakeTimeout: float = 10.0
    closeTimeout: float = 5.0
    maxFrame: int = DEFAULT_MAX_FRAME
    clientId: str | None = None
    token: bytes | None = None
    tcpKeepalive: TCPKeepalive | None = None
    tcpNoDelay: bool = True
    maxPendingOutput: int = 4 << 20
    rttProbeEvery: int = 10
    ackEvery: int = 32
    ackDelay: float = 0.05

    def __post_init__(self) -> None:
        for name in ("interval", "timeout", "handshakeTimeout", "closeTimeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
            if value > MAX_WIRE_SECONDS:
                raise ValueError(
                    f"{name} must be at most {MAX_WIRE_SECONDS:.0f} seconds "
                    f"(a u32 of milliseconds on the wire), not {value!r}"
                )
        if self.interval < 0.001:
            raise ValueError(f"interval must be at least 0.001 s, not {self.interval!r}")
        if self.timeout <= self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must be longer than interval ({self.interval:g}s)"
            )
        if self.minInterval is not None and not 0 < self.minInterval <= self.interval:
            raise ValueError(
                f"minInterval must be positive and at most interval, not {self.minInterval!r}"
            )
        if self.maxInterval is not None and not self.interval <= self.maxInterval <= (
            MAX_WIRE_SECONDS
        ):
            raise ValueError(
                f"maxInterval must be at least interval and at most {MAX_WIRE_SECONDS:.0f} s, "
                f"not {self.maxInterval!r}"
            )
        if self.adaptiveInterval is not None and not (
            self.interval < self.adaptiveInterval <= MAX_WIRE_SECONDS
        ):
            raise ValueError(
                f"adaptiveInterval must be longer than interval ({self.interval:g}s), "
                f"not {self.adaptiveInterval!r}"
            )
        if self.adaptiveInterval is not None and self.requirePongs:
            raise ValueError("adaptiveInterval and requirePongs do not mix")
        if not MIN_MAX_FRAME <= self.maxFrame <= MAX_WIRE_FRAME:
            raise ValueError(f"maxFrame must be between {MIN_MAX_FRAME} and 2**32-1")
        if self.clientId is not None and len(self.clientId.encode("utf-8")) > MAX_FIELD_BYTES:
            raise ValueError("clientId must be at most 255 bytes of UTF-8")
        if self.rttProbeEvery < 0:
            raise ValueError(f"rttProbeEvery must be >= 0, not {self.rttProbeEvery!r}")
        if self.ackEvery < 1:
            raise ValueError(f"ackEvery must be >= 1, not {self.ackEvery!r}")
        if not isinstance(self.ackDelay, (int, float)) or not self.ackDelay > 0:
            raise ValueError(f"ackDelay must be positive seconds, not {self.ackDelay!r}")
        if self.maxPendingOutput < 0:
            raise ValueError(f"maxPendingOutput must be >= 0, not {self.maxPendingOutput!r}")
        if self.token is not None and not 0 < len(self.token) <= MAX_FIELD_BYTES:
            raise ValueError("token must be 1 to 255 bytes")

    @property
    def serverMinInterval(self) -> float:
        """The floor a server applies to the intervals clients propose."""
        if self.minInterval is not None:
            return self.minInterval
        return min(DEFAULT_MIN_INTERVAL, self.interval)

    @property
    def acceptedIntervals(self) -> tuple[float, float]:
        """The intervals a client accepts from a server, inclusive."""
        low = self.minInterval
        if low is None:
            low = max(0.001, self.interval / MIN_INTERVAL_DIVISOR)
        high = self.maxInterval
        if high is None:
            high = min(self.interval * MAX_INTERVAL_FACTOR, MAX_WIRE_SECONDS)
        return low, high
