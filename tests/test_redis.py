"""
Heartbeats beside a real request/response protocol: a real Redis server
on 127.0.0.1 (tests/redis_server.py), kept alive through
L{KeepaliveWrappingFactory} by txredisapi's own client and by a plain
line protocol, through a latency proxy (pytest only).

Before: keeping a Redis connection alive with RawHeartbeatProtocol while
the application sent commands, 8 of 20 INCRs got a heartbeat's +PONG as
their reply.
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver

from twisted_keepalive import HeartbeatTimeout
from twisted_keepalive.testing import FaultProxy
from twisted_keepalive.wrap import KeepaliveEndpoint, KeepaliveWrapper, KeepaliveWrappingFactory

from .redis_server import RedisServer


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def txredis(port: int, reconnect: bool = True, **settings: Any) -> Any:
    """txredisapi's factory, connected through a heartbeat endpoint."""
    factory = txredisapi.RedisFactory(f"127.0.0.1:{port}", None, 1)
    factory.reconnect = reconnect
    factory.startConnecting(
        KeepaliveEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port), **settings)
    )
    return factory


def wrapperOf(factory: Any) -> KeepaliveWrapper:
    (protocol,) = factory.pool
    wrapper = protocol.transport
    assert isinstance(wrapper, KeepaliveWrapper)
    return wrapper


@pytest_twisted.inlineCallbacks
def test_applicationPingThroughTxredisapi() -> Any:
    """
    The heartbeat is the client's own PING: concurrent INCRs through 40 ms
    of latency each way, heartbeats in every idle gap, every reply its own.
    """
    redis = yield RedisServer.start()
    proxy = FaultProxy("127.0.0.1", redis.port)
    proxy.delay(0.04)
    port = proxy.listen()
    factory = txredis(port, interval=0.05, timeout=2.0, ping=lambda p: p.ping())
    try:
        handler = yield factory.deferred
        got: list[Any] = []
        for _ in range(10):
            replies = yield gatherResults([handler.incr("k") for _ in range(20)])
            got.extend(replies)
            yield sleep(0.12)  # idle: the heartbeat pings
        wrapper = wrapperOf(factory)
        assert sorted(got) == list(range(1, 201)), got
        assert wrapper.pingsSent >= 5 and wrapper.repliesMatched >= wrapper.pingsSent - 1
        assert wrapper.rtt.minimum is not None
        assert 0.08 <= wrapper.rtt.minimum < 0.5  # the proxy's 2 x 40 ms
    finally:
        yield handler.disconnect()
        factory.stopTrying()
        yield proxy.stop()
        redis.stop()


class Commands(LineReceiver):
    """A plain RESP client: INCR k, one reply line each."""

    def connectionMade(self) -> None:
        self.outstanding = 0
        self.lines: list[bytes] = []
        self.waiting: list[Deferred[bytes]] = []
        self.factory.ready.callback(self)

    def incr(self) -> Deferred[bytes]:
        self.outstanding += 1
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        self.sendLine(b"INCR k")
        return d

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        self.outstanding -= 1
        self.waiting.pop(0).callback(line)


@pytest_twisted.inlineCallbacks
def test_byteLevelPingBesideALineReceiver() -> Any:
    """
    PING bytes beside an application's own commands: the +PONG is taken
    out only while a ping is outstanding, and no ping goes out while a
    command is (the busy hook), so no reply is ever another's.
    """
    redis = yield RedisServer.start()
    proxy = FaultProxy("127.0.0.1", redis.port)
    proxy.delay(0.04)
    port = proxy.listen()
    app: Any = ClientFactory.forProtocol(Commands)
    app.ready = Deferred()
    wrapping = KeepaliveWrappingFactory(
        app,
        interval=0.05,
        timeout=2.0,
        pingBytes=b"PING\r\n",
        reply=b"+PONG\r\n",
        busy=lambda p: p.outstanding > 0,
    )
    connector = reactor.connectTCP("127.0.0.1", port, wrapping)
    try:
        commands = yield app.ready
        for _ in range(10):
            yield gatherResults([commands.incr() for _ in range(20)])
            yield sleep(0.12)
        wrapper = commands.transport
        assert all(line.startswith(b":") for line in commands.lines), commands.lines
        assert sorted(int(line[1:]) for line in commands.lines) == list(range(1, 201))
        # (the last ping may still be on its way)
        assert wrapper.pingsSent >= 5 and wrapper.repliesMatched >= wrapper.pingsSent - 1
    finally:
        connector.disconnect()
        yield sleep(0.1)
        yield proxy.stop()
        redis.stop()


@pytest_twisted.inlineCallbacks
def test_idleConnectionOutlivesRedisTimeout() -> Any:
    """
    Redis closes clients idle for `timeout` seconds (1 here); the
    heartbeat keeps one alive for 2.5 s, while an unwrapped one is closed.
    """
    redis = yield RedisServer.start("--timeout", "1")
    kept = txredis(redis.port, False, interval=0.3, timeout=2.0, ping=lambda p: p.ping())
    bare = txredisapi.RedisFactory(f"127.0.0.1:{redis.port}", None, 1)
    bare.reconnect = False
    bare.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", redis.port))
    try:
        handler = yield kept.deferred
        bareHandler = yield bare.deferred
        first = kept.pool[0]
        (bareProtocol,) = bare.pool
        yield sleep(2.5)
        assert kept.pool == [first] and first.connected  # the same connection
        assert (yield handler.incr("k")) == 1
        assert not bareProtocol.connected  # Redis closed the idle one
        del bareHandler
    finally:
        yield handler.disconnect()
        kept.stopTrying()
        bare.stopTrying()
        redis.stop()
        yield sleep(0.05)


@pytest_twisted.inlineCallbacks
def test_frozenRedisDetectedWithinTheBound() -> Any:
    redis = yield RedisServer.start()
    factory = txredis(redis.port, False, interval=0.2, timeout=0.8, ping=lambda p: p.ping())
    try:
        handler = yield factory.deferred
        wrapper = wrapperOf(factory)
        lost: Deferred[None] = Deferred()
        protocol = wrapper.wrappedProtocol
        previous = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            previous(reason)
            lost.callback(None)

        protocol.connectionLost = connectionLost
        redis.freeze()
        frozeAt = time.monotonic()
        yield lost
        took = time.monotonic() - frozeAt
        assert isinstance(wrapper.closeReason.value, HeartbeatTimeout)
        # The bound: the timeout after the last byte (at most an interval
        # before the freeze), plus a timer's lateness.
        assert took <= 0.8 + 0.3, took
        del handler
    finally:
        factory.stopTrying()
        redis.stop()
        yield sleep(0.05)
