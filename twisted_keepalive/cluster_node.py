"""
L{ClusterNode}: makes a L{KeepaliveServerFactory} one node of a cluster.

Presence: the node tells the backend who connects and leaves, and renews
it all every third of the TTL.  Push: L{ClusterNode.sendTo} reaches a
client on any node.  Sessions: a session's server side is saved in the
backend, and nothing a client sees runs ahead of what is saved: a
session's outgoing bytes (its messages, acknowledgements, even its HELLO)
are held until the commit that covers them has succeeded, one commit per
batch (what one reactor turn wrote), not per message.  So a node killed at
any instant leaves in the backend at least everything its clients have
seen, and a client resuming on another node gets exactly the rest.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .cluster import (
    ClusterBackend,
    NodeView,
    Presence,
    SavedSession,
    SessionDelta,
    SessionMoved,
)
from .errors import (
    ClusterUnavailable,
    NotDelivered,
    UnknownClient,
)
from .frames import HANDSHAKE_MAX_FRAME, FrameType, Hello, parseFrame
from .heartbeat import HeartbeatProtocol, describePeer
from .history import History, serverCounters
from .session import Session

if TYPE_CHECKING:
    from .server import KeepaliveServerFactory


_length = struct.Struct(">I").unpack_from
_LIVENESS = (FrameType.PING, FrameType.PONG)


def _splitLiveness(data: bytes) -> tuple[bytes, bytes]:
    """(the PINGs and PONGs in C{data}, the other frames), each in order."""
    liveness: list[bytes] = []
    rest: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        size = 4 + _length(data, offset)[0]
        frame = data[offset : offset + size]
        (liveness if frame[4] in _LIVENESS else rest).append(frame)
        offset += size
    return b"".join(liveness), b"".join(rest)


@dataclass
class _Record:
    """A session this node saves: what its last commit wrote."""

    session: Session
    identity: bytes
    committedNext: int
    full: bool


class CommitGate:
    """
    A connection's transport, holding a session's outgoing bytes until the
    session state they reveal is saved.

    Held bytes are bounded by the session's own bounds (they are its
    messages) plus acknowledgements and PONGs.  While the backend is down
    the gate lets everything through (and the next commit writes the
    session in full).
    """

    def __init__(self, transport: Any, node: ClusterNode, record: _Record) -> None:
        self.transport = transport
        self.node = node
        self.record = record
        self.held: list[bytes] = []
        self.committing = False
        self.closing = False
        self.gone = False
        self._scheduled: IDelayedCall | None = None
        self._waiters: list[Deferred[None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def write(self, data: bytes) -> None:
        if self.gone:
            return
        if data[4] in _LIVENESS or len(data) != 4 + _length(data)[0]:
            # PINGs and PONGs tell nothing of the session: they go out at
            # once (in their own order), so a slow or frozen Redis never
            # makes a client think us dead.  The protocol writes whole
            # frames; a write of one DATA frame is the common case.
            liveness, data = _splitLiveness(data)
            if liveness:
                self.transport.write(liveness)
            if not data:
                return
        if not self.held and not self.committing and not self.node.backend.up:
            self.record.full = True  # the saved copy falls behind
            self.transport.write(data)
            return
        self.held.append(data)
        if self._scheduled is None and not self.committing:
            self._scheduled = self.node.clock.callLater(0, self._commit)

    def writeSequence(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        if self.held or self.committing:
            self.closing = True  # after what it holds (a CLOSE, often)
        else:
            self.transport.loseConnection()

    def abortConnection(self) -> None:
        self._stop()
        self.transport.abortConnection()

    def whenFlushed(self) -> Deferred[None]:
        """Fires once what is held now is saved and written."""
        if not self.held and not self.committing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _stop(self) -> None:
        self.gone = True
        self.held = []
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(NotDelivered("the connection closed before the message was saved"))

    def _commit(self) -> None:
        self._scheduled = None
        if self.gone:
            return
        covered, self.held = self.held, []
        waiters, self._waiters = self._waiters, []
        self.committing = True
        d = self.node.commit(self.record, self.node.liveTTL)

        def done(result: object) -> None:
            self.committing = False
            if self.gone:
                return
            if isinstance(result, Failure):
                if result.check(SessionMoved):
                    self.node.log.info(
                        "Session moved to another node; closing its old connection here"
                    )
                    for w in waiters:
                        w.errback(NotDelivered("the client resumed on another node"))
                    self._stop()
                    self.transport.abortConnection()
                    return
                # The backend is down: what this connection says is no
                # longer saved; serve the client anyway.
                self.record.full = True
            self.transport.writeSequence(covered)
            for w in waiters:
                w.callback(None)
            if self.held:
                self._commit()
            elif self.closing:
                self.transport.loseConnection()

        d.addBoth(done)


class ClusterNode:
    """
    One server's membership in a cluster: presence, pushes across nodes,
    and sessions saved in the backend.

    @ivar owner: this node's token for the sessions it holds (its name and
        a number drawn at start: a restarted node with the same name does
        not mistake its old sessions for its own).
    """

    log = Logger()

    def __init__(
        self,
        factory: KeepaliveServerFactory,
        backend: ClusterBackend,
        *,
        listen: str = "",
        history: History | None = None,
    ) -> None:
        self.factory = factory
        self.backend = backend
        self.listen = listen
        self.owner = f"{backend.node}#{os.urandom(4).hex()}"
        self.started = time.time()
        self._records: dict[bytes, _Record] = {}
        self._prefetching: dict[HeartbeatProtocol, bytearray] = {}
        self.sessionsAdopted = 0
        #: Sessions another node took over (their clients resumed there).
        self.sessionsMovedAway = 0
        self.commitFailures = 0
        self.localOnlyBroadcasts = 0
        self._joinWaiters: list[Deferred[None]] = []
        factory.cluster = self
        if hasattr(backend, "fullState"):
            backend.fullState = self._fullState
        self.history = history or History(serverCounters(factory), clock=factory.clock)

    @property
    def node(self) -> str:
        return self.backend.node

    @property
    def clock(self) -> Any:
        return self.factory._clock

    @property
    def liveTTL(self) -> float:
        """A live session outlives a killed node by its whole grace period."""
        return (self.factory.sessionGrace or 0) + getattr(self.backend, "ttl", 0)

    def start(self) -> None:
        self.backend.start(self)

    def stop(self) -> Deferred[None]:
        return self.backend.stop()

    # Factory hooks

    def protocolBuilt(self, protocol: HeartbeatProtocol) -> None:
        """
        Read the client's HELLO before the handshake, to fetch the session
        it names from the backend first (another node may have it).
        """
        if not self.backend.up or self.factory.sessionGrace is None:
            return
        self._prefetching[protocol] = bytearray()
        original = protocol.dataReceived

        def dataReceived(data: bytes) -> None:
            buffered = self._prefetching.get(protocol)
            if buffered is None:
                original(data)
                return
            buffered += data
            if not getattr(protocol, "_claiming", False):
                self._maybeClaim(protocol, buffered)

        protocol.dataReceived = dataReceived  # type: ignore[method-assign]

    def _release(self, protocol: HeartbeatProtocol) -> None:
        buffered = self._prefetching.pop(protocol, None)
        with contextlib.suppress(AttributeError):
            del protocol.dataReceived
        transport = protocol.transport
        if getattr(protocol, "_claiming", False):
            protocol._claiming = False  # type: ignore[attr-defined]
            if transport is not None and not protocol._lost:
                transport.resumeProducing()  # type: ignore[attr-defined]
        if buffered and not protocol._lost:
            protocol.dataReceived(bytes(buffered))

    def _maybeClaim(self, protocol: HeartbeatProtocol, buffered: bytearray) -> None:
        if len(buffered) < 4:
            return
        length = int.from_bytes(buffered[:4], "big")
        if length < 2 or length > HANDSHAKE_MAX_FRAME or buffered[4] != FrameType.HELLO:
            self._release(protocol)  # the engine says what is wrong
            return
        if len(buffered) < 4 + length:
            return
        try:
            hello = parseFrame(buffered[4], buffered[5], bytes(buffered[6 : 4 + length]))
        except Exception:
            self._release(protocol)
            return
        if not isinstance(hello, Hello) or hello.session is None or len(hello.session) != 16:
            self._release(protocol)
            return
        token = self.factory.heartbeatConfig.token
        if token is not None and not hmac.compare_digest(hello.token or b"", token):
            self._release(protocol)  # refused by the handshake: no Redis call for it
            return
        sessionId = hello.session
        identity = self.factory.identityOf(protocol, hello)
        protocol._claiming = True  # type: ignore[attr-defined]
        assert protocol.transport is not None
        protocol.transport.pauseProducing()  # type: ignore[attr-defined]
        d = self.backend.claimSession(sessionId, identity, self.owner)

        def adopt(saved: SavedSession | None) -> None:
            if saved is not None and not protocol._lost:
                self._adopt(sessionId, identity, saved)

        d.addCallback(adopt)
        d.addErrback(lambda f: None)  # refused or unreachable: the local path decides
        d.addBoth(lambda _: self._release(protocol))

    def _adopt(self, sessionId: bytes, identity: bytes, saved: SavedSession) -> None:
        f = self.factory
        local = f._findKept(sessionId)
        if local is not None and saved.previousOwner == self.owner:
            return  # ours all along: the local copy is at least as new
        session = f.newSession(sessionId)
        session.restore(saved.received, saved.nextSeq, saved.acked, saved.messages)
        f.adoptSession(session, identity)
        self._records[sessionId] = _Record(session, identity, saved.nextSeq, False)
        self.sessionsAdopted += 1
        if saved.previousOwner and saved.previousOwner != self.owner:
            # Its old node may still keep it (in its grace): tell it, so that
            # it lets go quietly instead of reporting its messages lost.
            self.backend.sessionClaimed(sessionId, saved.previousOwner)

    def sessionAttached(
        self, protocol: HeartbeatProtocol, session: Session, identity: bytes, resumed: bool
    ) -> None:
        """A handshake attached C{session}: gate the connection on its commits."""
        record = self._records.get(session.id)
        if record is None or record.session is not session:
            record = _Record(session, identity, session.nextSeq, True)
            self._records[session.id] = record
        transport = protocol.transport
        if isinstance(transport, CommitGate):
            transport = transport.transport
        protocol.transport = CommitGate(transport, self, record)  # type: ignore[assignment]
        protocol._plainTCP = None  # no writes around the gate

    def clientReady(self, protocol: HeartbeatProtocol) -> None:
        presence = self._presence(protocol)
        if presence is not None:
            self.backend.clientConnected(presence)

    def clientLost(
        self, protocol: HeartbeatProtocol, clientId: str | None, wasCurrent: bool
    ) -> None:
        self._prefetching.pop(protocol, None)
        if clientId is not None and wasCurrent:
            self.backend.clientDisconnected(clientId)
        gate = protocol.transport
        if isinstance(gate, CommitGate):
            gate._stop()
            record = gate.record
            if self._records.get(record.session.id) is record and self.backend.up:
                # The grace period starts: the saved copy lasts as long.
                self.commit(record, self.factory.sessionGrace or 0).addErrback(lambda f: None)

    def sessionForgotten(self, session: Session) -> None:
        record = self._records.pop(session.id, None)
        if record is not None and self.backend.up:
            self.backend.deleteSession(session.id, self.owner).addErrback(lambda f: None)

    def sessionsDropped(self, sessions: list[Session]) -> None:
        """Forgotten locally on shutdown: the saved copies stay, for another node."""
        for session in sessions:
            self._records.pop(session.id, None)

    # Commits

    def commit(self, record: _Record, ttl: float) -> Deferred[None]:
        session = record.session
        full = record.full
        messages = session.stored() if full else session.storedSince(record.committedNext)
        delta = SessionDelta(
            session.received,
            session.nextSeq,
            session.acked,
            session.firstUnacked,
            messages,
            record.full,
        )
        wasFull = record.full
        record.full = False
        committedNext = session.nextSeq
        d = self.backend.commitSession(session.id, record.identity, self.owner, delta, ttl)

        def saved(_: object) -> None:
            record.committedNext = max(record.committedNext, committedNext)

        def failed(f: Failure) -> Failure:
            self.commitFailures += 1
            if wasFull or not f.check(SessionMoved):
                record.full = True
            return f

        return d.addCallbacks(saved, failed)

    def _fullState(self, sessionId: bytes) -> SessionDelta | None:
        record = self._records.get(sessionId)
        if record is None:
            return None
        s = record.session
        return SessionDelta(s.received, s.nextSeq, s.acked, s.firstUnacked, s.stored(), True)

    # ClusterMember

    def deliverLocal(self, clientId: str, message: bytes) -> Deferred[None]:
        protocol = self.factory.byClientId.get(clientId)
        if protocol is None or not protocol.isOpen:
            return fail(UnknownClient(clientId))
        if not self.factory.push(protocol, message):
            return fail(NotDelivered(f"client {clientId!r} could not take the message"))
        gate = protocol.transport
        if isinstance(gate, CommitGate):
            return gate.whenFlushed()
        return succeed(None)

    def broadcastLocal(self, message: bytes, exclude: str | None = None) -> int:
        if exclude is None:
            return self.factory.broadcast(message)
        return self.factory.broadcast(message, where=lambda p: _clientId(p) != exclude)

    def _presence(self, protocol: HeartbeatProtocol) -> Presence | None:
        core = protocol.core
        if core is None or core.peerHello is None or core.peerHello.clientId is None:
            return None
        stats = protocol.stats
        return Presence(
            core.peerHello.clientId,
            self.node,
            stats.connectedAt,
            stats.srtt,
            describePeer(protocol.transport),
        )

    def localPresence(self) -> list[Presence]:
        out = []
        for protocol in list(self.factory.byClientId.values()):
            p = self._presence(protocol)
            if p is not None:
                out.append(p)
        return out

    def liveSessions(self) -> list[bytes]:
        return [
            p.core.session.id
            for p in self.factory.connections
            if p.core is not None and p.core.session is not None
        ]

    def nodeInfo(self) -> dict[str, Any]:
        f = self.factory
        return {
            "listen": self.listen,
            "pid": os.getpid(),
            "started": self.started,
            "clients": f.established,
            "evictions": f.evictions,
            "sessions": len(f._kept),
            "history": self.history.asJSON(),
        }

    def whenJoined(self) -> Deferred[None]:
        """Fires once the backend is reachable (at once if it is)."""
        if self.backend.up:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._joinWaiters.append(d)
        return d

    def backendUp(self) -> None:
        """Redis is back (maybe empty, after a restart): save every session in full."""
        waiters, self._joinWaiters = self._joinWaiters, []
        for d in waiters:
            d.callback(None)
        for record in self._records.values():
            record.full = True
        for protocol in list(self.factory.connections):
            gate = protocol.transport
            if isinstance(gate, CommitGate) and not gate.held and not gate.committing:
                self.commit(gate.record, self.liveTTL).addErrback(lambda f: None)
        for protocol in list(self.factory.byClientId.values()):
            presence = self._presence(protocol)
            if presence is not None:
                self.backend.clientConnected(presence)

    def sessionMoved(self, sessionId: bytes, owner: str) -> None:
        """
        Another node took over a session we owned as C{owner}: forget our
        copy without counting it lost; a connection of ours still on it
        (a partition) is closed.
        """
        if owner != self.owner:
            return  # an earlier run of a node with our name
        self._records.pop(sessionId, None)
        if self.factory.dropMovedSession(sessionId):
            self.sessionsMovedAway += 1

    def backendDown(self) -> None:
        for record in self._records.values():
            record.full = True

    # The API

    def sendTo(self, clientId: str, message: bytes) -> Deferred[str]:
        """
        Push to a client on any node: fires with the node's name once the
        message is in the client's session (saved), or fails with
        L{UnknownClient}, L{NotDelivered}, L{ClusterUnavailable},
        L{ClusterBusy} or L{ClusterTimeout}.  Never blocks; bounded.
        """
        if clientId in self.factory.byClientId:
            return self.deliverLocal(clientId, message).addCallback(lambda _: self.node)
        return self.backend.sendTo(clientId, message)

    def broadcast(self, message: bytes, exclude: str | None = None) -> Deferred[int]:
        """
        Push to every client of every node (but C{exclude}, a client id);
        fires with how many took it.  With the backend down, only this
        node's clients get it and the Deferred fails with
        L{ClusterUnavailable} saying so.
        """
        if self.backend.up:
            d = self.backend.broadcast(message, exclude)
        else:
            d = fail(ClusterUnavailable("the cluster is unreachable"))

        def localOnly(f: Failure) -> int:
            # Nothing was published: this node's clients at least.
            f.trap(ClusterUnavailable)
            count = self.broadcastLocal(message, exclude)
            self.localOnlyBroadcasts += 1
            raise ClusterUnavailable(
                f"the cluster is unreachable: only the {count} clients of this node got it"
            )

        return d.addErrback(localOnly)

    def view(self) -> Deferred[list[NodeView]]:
        """Every live node and its clients (one backend round trip)."""
        return self.backend.view()

    def presence(self) -> Deferred[list[Presence]]:
        """Every client of the cluster, with its node."""
        return self.view().addCallback(lambda nodes: [p for n in nodes for p in n.clients])


def _clientId(protocol: HeartbeatProtocol) -> str | None:
    core = protocol.core
    return core.peerHello.clientId if core is not None and core.peerHello is not None else None
