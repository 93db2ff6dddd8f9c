"""
L{RedisCluster} and L{ClusterNode} in this process against a real Redis
(tests/redis_server.py): the Lua scripts' guarantees (claim, fencing,
deltas, TTLs), presence expiry, push across nodes and its errors, and the
commit gate (nothing reaches a client before it is saved).  Plain
functions (pytest runs them; trial skips this module).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import deferLater

from twisted_keepalive import HeartbeatConfig
from twisted_keepalive.cluster import SessionDelta, SessionMoved, SessionRefused
from twisted_keepalive.cluster_node import ClusterNode
from twisted_keepalive.errors import ClusterBusy, ClusterUnavailable, UnknownClient
from twisted_keepalive.redis_cluster import RedisCluster
from twisted_keepalive.server import KeepaliveServerFactory

from .cluster_e2e import client, connectedTo, stopClients
from .e2e import waitFor
from .redis_server import RedisServer

SID = bytes(range(16))


def sleep(seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


class Node:
    """A server factory listening on 127.0.0.1, one node of the cluster."""

    def __init__(self, redis: RedisServer, name: str, **backend: Any) -> None:
        self.factory = KeepaliveServerFactory(
            HeartbeatConfig(interval=0.5, timeout=2.0), sessionGrace=10.0
        )
        self.backend = RedisCluster(f"redis://127.0.0.1:{redis.port}/0", name, **backend)
        self.node = ClusterNode(self.factory, self.backend)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.node.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    def up(self) -> Any:
        return waitFor(lambda: succeed(self.backend.up), 10, f"{self.backend.node} to join")

    @pytest_twisted.inlineCallbacks
    def stop(self) -> Any:
        yield self.factory.shutdown(timeout=0.5)
        yield self.port.stopListening()
        yield self.node.stop()


@pytest_twisted.inlineCallbacks
def tearDown(redis: RedisServer, nodes: list[Node | None], clients: Sequence[Any] = ()) -> Any:
    """Clients, then nodes, then Redis (thawed first, in case a test froze it)."""
    redis.thaw()
    stopClients(list(clients))
    for n in nodes:
        if n is not None:
            yield n.stop()
    redis.stop()


@pytest_twisted.inlineCallbacks
def joined(redis: RedisServer, *names: str, **backend: Any) -> Any:
    nodes = [Node(redis, name, **backend) for name in names]
    for n in nodes:
        yield n.up()
    return nodes


def delta(first: int, nextSeq: int, messages: list[tuple[int, bytes]], full: bool) -> SessionDelta:
    return SessionDelta(
        received=0, nextSeq=nextSeq, acked=first - 1, first=first, messages=messages, full=full
    )


@pytest_twisted.inlineCallbacks
def test_sessionScriptsClaimFenceTrimAndExpire() -> Any:
    redis = yield RedisServer.start()
    a = b = None
    try:
        a, b = yield joined(redis, "a", "b")
        ba, bb = a.backend, b.backend
        found = yield ba.claimSession(SID, b"me", "a#1")
        assert found is None
        # 2,500 messages in one commit: more than a Lua call takes at once.
        messages = [(i, b"m%d" % i) for i in range(1, 2501)]
        yield ba.commitSession(SID, b"me", "a#1", delta(1, 2501, messages, True), 30)
        saved = yield bb.claimSession(SID, b"me", "b#1")
        assert saved.messages == messages and saved.nextSeq == 2501
        assert saved.previousOwner == "a#1"
        with pytest.raises(SessionRefused):
            yield bb.claimSession(SID, b"someone else", "b#1")
        # The old owner is fenced off.
        with pytest.raises(SessionMoved):
            yield ba.commitSession(SID, b"me", "a#1", delta(1, 2501, [], False), 30)
        # A delta: 2,000 acknowledged, one new message.
        yield bb.commitSession(SID, b"me", "b#1", delta(2001, 2502, [(2501, b"new")], False), 30)
        saved = yield bb.claimSession(SID, b"me", "b#1")
        assert [s for s, _ in saved.messages] == list(range(2001, 2502))
        assert saved.messages[-1] == (2501, b"new")
        # Only the owner deletes.
        yield ba.deleteSession(SID, "a#1")
        assert (yield bb.claimSession(SID, b"me", "b#1")) is not None
        yield bb.deleteSession(SID, "b#1")
        assert (yield bb.claimSession(SID, b"me", "b#1")) is None
        # Sessions expire by TTL.
        yield ba.commitSession(SID, b"me", "a#2", delta(1, 2, [(1, b"x")], True), 0.3)
        yield sleep(0.5)
        assert (yield bb.claimSession(SID, b"me", "b#1")) is None
        # A delta for a session Redis lost (a restart) is written in full.
        yield ba.commitSession(SID, b"me", "a#3", delta(1, 1, [], False), 30)
    finally:
        yield tearDown(redis, [a, b])


@pytest_twisted.inlineCallbacks
def test_presenceLeavesWithAKilledNode() -> Any:
    redis = yield RedisServer.start()
    a = b = None
    try:
        a, b = yield joined(redis, "a", "b", ttl=0.6)
        nodes = yield b.node.view()
        assert [n.name for n in nodes] == ["a", "b"]
        # "Kill" a: it stops renewing (and does not say goodbye).
        assert a.backend._loop is not None
        a.backend._loop.stop()
        killed = reactor.seconds()

        @pytest_twisted.inlineCallbacks
        def gone() -> Any:
            nodes = yield b.node.view()
            return [n.name for n in nodes] == ["b"]

        yield waitFor(gone, 3, "a to leave presence")
        assert reactor.seconds() - killed >= 0.3  # it was listed until its TTL ran out
    finally:
        yield tearDown(redis, [a, b])


@pytest_twisted.inlineCallbacks
def test_sendToAcrossNodesAndItsErrors() -> Any:
    redis = yield RedisServer.start()
    a = b = None
    clients = []
    try:
        a, b = yield joined(redis, "a", "b")
        f = client("dev", [b.address])
        f.connect()
        clients.append(f)
        yield waitFor(lambda: succeed(connectedTo(f) is not None), 5, "the client")
        yield waitFor(
            lambda: a.node.presence().addCallback(lambda ps: [p.node for p in ps] == ["b"]),
            5,
            "presence",
        )
        where = yield a.node.sendTo("dev", b"hello")
        assert where == "b"
        yield waitFor(lambda: succeed(f.received == [b"hello"]), 5, "the message")
        count = yield a.node.broadcast(b"all")
        assert count == 1
        with pytest.raises(UnknownClient):
            yield a.node.sendTo("nobody", b"x")
        a.backend.maxPending = 0
        with pytest.raises(ClusterBusy):
            yield a.node.sendTo("dev", b"x")
        a.backend.maxPending = 10
        redis.stop()
        yield waitFor(lambda: succeed(not a.backend._connected()), 5, "the disconnection")
        started = reactor.seconds()
        with pytest.raises(ClusterUnavailable):
            yield a.node.sendTo("dev", b"x")
        assert reactor.seconds() - started < 0.5  # fails fast, does not wait for Redis
        with pytest.raises(ClusterUnavailable):
            yield a.node.broadcast(b"x")
        assert a.node.localOnlyBroadcasts == 1
    finally:
        yield tearDown(redis, [a, b], clients)


@pytest_twisted.inlineCallbacks
def test_nothingReachesAClientBeforeItIsSaved() -> Any:
    """
    The commit gate: with Redis frozen (SIGSTOP) a push is held; once
    Redis answers, it is saved, then written.  Frozen past the reply
    timeout, Redis is declared down and the client is served anyway.
    """
    redis = yield RedisServer.start()
    a = None
    clients = []
    try:
        a = Node(redis, "a", replyTimeout=1.0)
        yield a.up()
        f = client("dev", [a.address])
        f.connect()
        clients.append(f)
        yield waitFor(lambda: succeed(connectedTo(f) is not None), 5, "the client")
        redis.freeze()
        assert a.factory.send("dev", b"held")
        yield sleep(0.3)
        assert f.received == []  # not saved yet: not sent
        redis.thaw()
        yield waitFor(lambda: succeed(f.received == [b"held"]), 5, "the message")
        saved = yield a.backend.claimSession(
            f.resumeSession.id, a.node._records[f.resumeSession.id].identity, a.node.owner
        )
        assert saved.nextSeq == 2  # it was saved (acknowledged or not)
        # Frozen for longer than the reply timeout: down, and served anyway.
        redis.freeze()
        assert a.factory.send("dev", b"served")
        yield waitFor(lambda: succeed(b"served" in f.received), 5, "service without Redis")
        assert not a.backend.up
        redis.thaw()
        yield waitFor(lambda: succeed(a.backend.up), 10, "Redis back")
        # Back up: the session is saved in full again.
        yield waitFor(
            lambda: a.backend.claimSession(
                f.resumeSession.id, a.node._records[f.resumeSession.id].identity, a.node.owner
            ).addCallback(lambda s: s is not None and s.nextSeq == 3),
            5,
            "the full save",
        )
    finally:
        yield tearDown(redis, [a], clients)


@pytest_twisted.inlineCallbacks
def test_aSessionThatMovesIsNotCountedLost() -> Any:
    """
    A client leaves node a (still alive) and resumes on node b: b tells a,
    which lets its copy go quietly, neither expired nor lost.
    """
    redis = yield RedisServer.start()
    a = b = None
    clients = []
    try:
        a, b = yield joined(redis, "a", "b")
        f = client("dev", [a.address, b.address])
        f.connect()
        clients.append(f)
        yield waitFor(lambda: succeed(connectedTo(f) == a.address), 5, "the client on a")
        yield a.port.stopListening()  # a lives on, but the client must go to b
        for p in list(a.factory.connections):
            p.transport.abortConnection()
        yield waitFor(lambda: succeed(connectedTo(f) == b.address), 5, "the client on b")
        yield waitFor(lambda: succeed(a.node.sessionsMovedAway == 1), 5, "a told")
        assert b.node.sessionsAdopted == 1
        assert a.factory.sessions == {} and a.factory.sessionsExpired == 0
        assert a.factory.sessionsEvicted == 0
    finally:
        yield tearDown(redis, [a, b], clients)


@pytest_twisted.inlineCallbacks
def test_pongsDoNotWaitForRedis() -> Any:
    """
    With Redis frozen (within the reply timeout) a session's data waits,
    but its PONGs do not: an idle client with a short timeout stays
    connected.
    """
    redis = yield RedisServer.start()
    a = None
    clients = []
    try:
        a = Node(redis, "a", replyTimeout=5.0)
        yield a.up()
        f = client("dev", [a.address], interval=0.2, timeout=0.8)
        f.connect()
        clients.append(f)
        yield waitFor(lambda: succeed(connectedTo(f) is not None), 5, "the client")
        protocol = f.connected
        redis.freeze()
        assert a.factory.send("dev", b"waits")  # held: it changes the session
        yield sleep(1.6)  # twice the client's timeout
        assert f.connected is protocol and f.received == []
        redis.thaw()
        yield waitFor(lambda: succeed(f.received == [b"waits"]), 5, "the held message")
        assert f.connected is protocol
    finally:
        yield tearDown(redis, [a], clients)
