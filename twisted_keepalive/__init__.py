"""
twisted-keepalive: application heartbeats, dead-peer detection and
reconnection for long-lived Twisted TCP connections.
"""

from typing import TYPE_CHECKING, Any

from .backoff import RetryPolicy, jitteredBackoff
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
from .session import Overflow, QueueFull, Session
from .tcp import TCPKeepalive

if TYPE_CHECKING:
    from .budget import MemoryBudget
    from .client import ClientState, GaveUp, KeepaliveClientFactory
    from .server import ConnectionInfo, DisconnectReason, KeepaliveServerFactory, ServerProtocol
    from .wrap import KeepaliveEndpoint, KeepaliveWrapper, KeepaliveWrappingFactory

#: Imported on first use (PEP 562): a program that needs only the protocol
#: does not load the factories, the wrapper and what they import (46 more
#: modules at start-up).
_LAZY = {
    "MemoryBudget": "budget",
    "ClientState": "client",
    "GaveUp": "client",
    "KeepaliveClientFactory": "client",
    "ConnectionInfo": "server",
    "DisconnectReason": "server",
    "KeepaliveServerFactory": "server",
    "ServerProtocol": "server",
    "KeepaliveEndpoint": "wrap",
    "KeepaliveWrapper": "wrap",
    "KeepaliveWrappingFactory": "wrap",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
