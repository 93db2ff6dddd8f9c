"""
What a cluster of keepconn servers shares, whatever carries it: who is
connected where (presence), messages for clients on other nodes, and the
sessions that must survive a node.

L{ClusterBackend} is the interface a node (L{ClusterNode}) uses; the one
implementation is L{RedisCluster}.  See docs/cluster.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class Presence:
    """
    One client connected somewhere in the cluster.  Times are epoch seconds.
    """

    clientId: str
    node: str
    since: float
    rtt: float | None
    peer: str

    def asJSON(self) -> dict[str, Any]:
        return {
            "client_id": self.clientId,
            "node": self.node,
            "connected_since": self.since,
            "rtt": self.rtt,
            "peer": self.peer,
        }


@dataclass(frozen=True)
class NodeView:
    """
    One live node, as it last described itself (refreshed every third of
    the presence TTL).
    """

    name: str
    info: dict[str, Any]
    clients: list[Presence] = field(default_factory=list)


@dataclass(frozen=True)
class SavedSession:
    """
    A session's server side as a node saved it: enough for another node to
    resume it (see L{Session.restore}).

    @ivar previousOwner: the owner token before this claim (a node's own
        token: its local copy is at least as new).
    """

    received: int
    nextSeq: int
    acked: int
    messages: list[tuple[int, bytes]]
    previousOwner: str


@dataclass
class SessionDelta:
    """
    What changed in a session since its last commit.

    @ivar full: write everything (a new session, or one whose saved copy
        may be stale): C{messages} are then all the messages kept.
    @ivar first: the oldest message still kept (anything older is gone).
    """

    received: int
    nextSeq: int
    acked: int
    first: int
    messages: list[tuple[int, bytes]]
    full: bool


class SessionMoved(Exception):
    """
    Another node has claimed the session (its client resumed there): this
    node's copy is stale and its connection must go.
    """


class SessionRefused(Exception):
    """
    The saved session belongs to another identity: not resumed.
    """


class ClusterMember(Protocol):
    """
    What a backend calls on its node.
    """

    def deliverLocal(self, clientId: str, message: bytes) -> Deferred[None]:
        """Push to a client of this node (fails with UnknownClient, NotDelivered)."""

    def broadcastLocal(self, message: bytes, exclude: str | None = None) -> int:
        """Push to every client of this node (but C{exclude}); how many took it."""

    def localPresence(self) -> list[Presence]:
        """This node's clients, for the presence refresh."""

    def liveSessions(self) -> list[bytes]:
        """Ids of the sessions attached to this node's live connections."""

    def nodeInfo(self) -> dict[str, Any]:
        """What this node says of itself (listen address, counters, history)."""

    def backendUp(self) -> None:
        """The backend is reachable again: save every live session in full."""

    def backendDown(self) -> None:
        """The backend became unreachable."""

    def sessionMoved(self, sessionId: bytes, owner: str) -> None:
        """Another node claimed a session this node owned as C{owner}."""


class ClusterBackend(Protocol):
    """
    The shared state of a cluster.  Every call returns at once: a Deferred,
    failing with L{ClusterUnavailable} at once while the backend is down.
    """

    node: str
    up: bool

    def start(self, member: ClusterMember) -> None: ...

    def stop(self) -> Deferred[None]: ...

    def view(self) -> Deferred[list[NodeView]]: ...

    def clientConnected(self, presence: Presence) -> None: ...

    def clientDisconnected(self, clientId: str) -> None: ...

    def sendTo(self, clientId: str, message: bytes) -> Deferred[str]: ...

    def broadcast(self, message: bytes, exclude: str | None = None) -> Deferred[int]: ...

    def claimSession(
        self, sessionId: bytes, identity: bytes, owner: str
    ) -> Deferred[SavedSession | None]: ...

    def commitSession(
        self, sessionId: bytes, identity: bytes, owner: str, delta: SessionDelta, ttl: float
    ) -> Deferred[None]: ...

    def deleteSession(self, sessionId: bytes, owner: str) -> Deferred[None]: ...

    def sessionClaimed(self, sessionId: bytes, previousOwner: str) -> None: ...
