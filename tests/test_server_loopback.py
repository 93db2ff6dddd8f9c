"""
KeepaliveServerFactory with real sockets on 127.0.0.1 (pytest only).
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from twisted_keepalive import CloseCode, HeartbeatConfig, HeartbeatProtocol, PeerClosed, Role
from twisted_keepalive.frames import Hello, encodeHello
from twisted_keepalive.server import DisconnectReason, KeepaliveServerFactory


class Client(HeartbeatProtocol):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.ready: Deferred[None] = Deferred()
        self.gone: Deferred[Any] = Deferred()
        self.messages: list[bytes] = []

    def handshakeCompleted(self) -> None:
        self.ready.callback(None)

    def messageReceived(self, message: bytes) -> None:
        self.messages.append(message)

    def connectionClosed(self, reason: Any) -> None:
        self.gone.callback(reason.value)


class MuteAfterHello(Protocol):
    """
    Says HELLO, then nothing at all, with the socket left open.
    """

    def __init__(self) -> None:
        self.gone: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(encodeHello(Hello(1, 0.2, 0.6, 4096)))

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


def endpoint(port: Any) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)


@pytest_twisted.inlineCallbacks
def test_silentClientWithOpenSocketIsEvicted() -> Any:
    factory = KeepaliveServerFactory(HeartbeatConfig(interval=0.2, timeout=0.6))
    left: list[DisconnectReason] = []
    factory.clientDisconnected = lambda protocol, reason: left.append(reason)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        mute = MuteAfterHello()
        yield connectProtocol(endpoint(port), mute)
        started = reactor.seconds()
        yield mute.gone
        elapsed = reactor.seconds() - started
        assert left == [DisconnectReason.EVICTED]
        assert factory.evictions == 1
        assert 0.6 <= elapsed < 1.2, elapsed
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_broadcastToManyThenGracefulShutdown() -> Any:
    count = 120
    factory = KeepaliveServerFactory(HeartbeatConfig(interval=1.0, timeout=3.0))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=256)
    clients = [
        Client(HeartbeatConfig(interval=1.0, timeout=3.0, clientId=f"c{i}"), role=Role.CLIENT)
        for i in range(count)
    ]
    try:
        yield gatherResults([connectProtocol(endpoint(port), c) for c in clients])
        yield gatherResults([c.ready for c in clients])
        assert len(list(factory)) == count
        assert factory.broadcast(b"to everyone") == count
        assert factory.send("c7", b"just seven")
        for _ in range(50):
            if all(c.messages for c in clients) and len(clients[7].messages) == 2:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        assert all(c.messages[0] == b"to everyone" for c in clients)
        assert clients[7].messages == [b"to everyone", b"just seven"]

        yield port.stopListening()
        yield factory.shutdown(timeout=2.0, spread=10.0)
        reasons = yield gatherResults([c.gone for c in clients])
        assert all(isinstance(r, PeerClosed) and r.code == CloseCode.GOING_AWAY for r in reasons)
        hints = sorted(r.retryAfter for r in reasons)
        assert hints[0] >= 0.0 and hints[-1] <= 10.0
        assert hints[-1] - hints[0] > 5.0  # spread out, not one burst
        assert factory.counts[DisconnectReason.SHUTDOWN] == count
    finally:
        for c in clients:
            if c.transport is not None and c.transport.connected:
                c.transport.abortConnection()
        if port.connected:
            yield port.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)
