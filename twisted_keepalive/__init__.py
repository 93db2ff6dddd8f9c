"""
twisted-keepalive: application heartbeats, dead-peer detection and
reconnection for long-lived Twisted TCP connections.
"""

from .config import HeartbeatConfig
from .connection import KeepaliveConnection, Role
from .errors import (
    CloseCode,
    ClosedLocally,
    HandshakeTimeout,
    HeartbeatTimeout,
    KeepaliveError,
    LocalProtocolError,
    PeerClosed,
    ProtocolViolation,
    RemoteProtocolError,
)
from .heartbeat import HeartbeatProtocol, HeartbeatStats
from .raw import RawHeartbeatConfig, RawHeartbeatProtocol
from .tcp import TCPKeepalive

__version__ = "0.1.0"

__all__ = [
    "CloseCode",
    "ClosedLocally",
    "HandshakeTimeout",
    "HeartbeatConfig",
    "HeartbeatProtocol",
    "HeartbeatStats",
    "HeartbeatTimeout",
    "KeepaliveConnection",
    "KeepaliveError",
    "LocalProtocolError",
    "PeerClosed",
    "ProtocolViolation",
    "RawHeartbeatConfig",
    "RawHeartbeatProtocol",
    "RemoteProtocolError",
    "Role",
    "TCPKeepalive",
    "__version__",
]
