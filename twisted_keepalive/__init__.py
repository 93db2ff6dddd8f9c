"""
twisted-keepalive: application heartbeats, dead-peer detection and
reconnection for long-lived Twisted TCP connections.
"""

from .backoff import RetryPolicy, jitteredBackoff
from .budget import MemoryBudget
from .client import ClientState, GaveUp, KeepaliveClientFactory
from .config import HeartbeatConfig
from .connection import KeepaliveConnection, Role
from .errors import (
    CloseCode,
    ClosedLocally,
    DeliveryCancelled,
    DeliveryFailed,
    HandshakeTimeout,
    HeartbeatTimeout,
    KeepaliveError,
    LocalProtocolError,
    MessageDropped,
    MessageLost,
    MessageTooLarge,
    PeerClosed,
    ProtocolViolation,
    Refused,
    RemoteProtocolError,
)
from .heartbeat import HeartbeatProtocol, HeartbeatStats
from .raw import RawHeartbeatConfig, RawHeartbeatProtocol
from .server import ConnectionInfo, DisconnectReason, KeepaliveServerFactory, ServerProtocol
from .session import Overflow, QueueFull, Session
from .tcp import TCPKeepalive
from .wrap import KeepaliveEndpoint, KeepaliveWrapper, KeepaliveWrappingFactory

__version__ = "0.1.0"

__all__ = [
    "ClientState",
    "CloseCode",
    "ClosedLocally",
    "ConnectionInfo",
    "DeliveryCancelled",
    "DeliveryFailed",
    "DisconnectReason",
    "GaveUp",
    "HandshakeTimeout",
    "HeartbeatConfig",
    "HeartbeatProtocol",
    "HeartbeatStats",
    "HeartbeatTimeout",
    "KeepaliveClientFactory",
    "KeepaliveConnection",
    "KeepaliveEndpoint",
    "KeepaliveError",
    "KeepaliveServerFactory",
    "KeepaliveWrapper",
    "KeepaliveWrappingFactory",
    "LocalProtocolError",
    "MemoryBudget",
    "MessageDropped",
    "MessageLost",
    "MessageTooLarge",
    "Overflow",
    "PeerClosed",
    "ProtocolViolation",
    "QueueFull",
    "RawHeartbeatConfig",
    "RawHeartbeatProtocol",
    "Refused",
    "RemoteProtocolError",
    "RetryPolicy",
    "Role",
    "ServerProtocol",
    "Session",
    "TCPKeepalive",
    "__version__",
    "jitteredBackoff",
]
