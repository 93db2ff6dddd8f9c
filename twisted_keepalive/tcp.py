"""
Kernel TCP keepalive per socket: SO_KEEPALIVE with TCP_KEEPIDLE,
TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT where the platform has them.

Twisted itself only offers C{setTcpKeepAlive(on)}, which leaves the kernel
default of two hours of idleness before the first probe.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

from twisted.logger import Logger

log = Logger()


@dataclass(frozen=True)
class TCPKeepalive:
    """
    @ivar idle: seconds of idleness before the first probe (TCP_KEEPIDLE).
    @ivar interval: seconds between probes (TCP_KEEPINTVL).
    @ivar count: unanswered probes before the kernel drops the connection
        (TCP_KEEPCNT).
    @ivar userTimeout: seconds that written data may stay unacknowledged
        before the kernel drops the connection (TCP_USER_TIMEOUT); this is
        what bounds a send into a dead peer.  L{None} leaves the default.
    """

    idle: int = 60
    interval: int = 10
    count: int = 5
    userTimeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("idle", "interval", "count"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TCP keepalive {name} must be a whole number >= 1, not {value!r}")
        if self.userTimeout is not None and not self.userTimeout > 0:
            raise ValueError(f"TCP user timeout must be positive, not {self.userTimeout!r}")

    @classmethod
    def parse(cls, text: str) -> TCPKeepalive:
        """
        Parse C{"IDLE,INTERVAL,COUNT"}, as the command line takes it.
        """
        parts = text.split(",")
        if len(parts) != 3:
            raise ValueError(f"expected IDLE,INTERVAL,COUNT, got {text!r}")
        try:
            idle, interval, count = (int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"expected three whole numbers IDLE,INTERVAL,COUNT, got {text!r}"
            ) from None
        return cls(idle, interval, count)


def findSocket(transport: object) -> socket.socket | None:
    """
    The socket under C{transport}, looking through wrappers such as TLS.
    """
    for _ in range(4):
        getHandle = getattr(transport, "getHandle", None)
        if getHandle is not None:
            handle = getHandle()
            if isinstance(handle, socket.socket):
                return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def applyTCPKeepalive(sock: socket.socket, settings: TCPKeepalive) -> list[str]:
    """
    Set the options on C{sock}, skipping those the platform lacks.

    @return: the names of the options that were set.
    """
    applied = []
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    applied.append("SO_KEEPALIVE")
    wanted: list[tuple[str, int]] = [
        ("TCP_KEEPIDLE", settings.idle),
        ("TCP_KEEPINTVL", settings.interval),
        ("TCP_KEEPCNT", settings.count),
    ]
    if settings.userTimeout is not None:
        wanted.append(("TCP_USER_TIMEOUT", max(1, round(settings.userTimeout * 1000))))
    for name, value in wanted:
        option = getattr(socket, name, None)
        if option is None:
            log.debug("{option} is not available on this platform; skipped", option=name)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
        applied.append(name)
    return applied


#: Where Linux's struct tcp_info keeps tcpi_last_data_sent (milliseconds):
#: after 8 one-byte fields and 9 u32s.  Stable ABI since Linux 2.6.
_LAST_DATA_SENT = struct.Struct("=I")
_LAST_DATA_SENT_OFFSET = 44
#: The kernel counts it in jiffies: a reading may be this much too old.
KERNEL_TICK = 0.004


def lastDataSent(sock: socket.socket) -> float | None:
    """
    Seconds since the kernel last sent data on C{sock} (Linux's TCP_INFO),
    or L{None} where that is not known.  Read once per heartbeat check, it
    spares a clock reading per message written (bench/datapath.py).
    """
    if not _LINUX or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < _LAST_DATA_SENT_OFFSET + 4:
        return None
    return float(_LAST_DATA_SENT.unpack_from(info, _LAST_DATA_SENT_OFFSET)[0]) / 1000.0


_LINUX = sys.platform.startswith("linux") and hasattr(socket, "TCP_INFO")
