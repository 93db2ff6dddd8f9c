"""
The library's protocols under Twisted's own ClientService, on 127.0.0.1
(pytest only): the documented recipe (docs/guide.md, "Under ClientService").
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.application.internet import ClientService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import deferLater

from twisted_keepalive import (
    HeartbeatConfig,
    HeartbeatProtocol,
    KeepaliveClientFactory,
    KeepaliveServerFactory,
    ServerProtocol,
    jitteredBackoff,
)

CONFIG = HeartbeatConfig(interval=0.2, timeout=0.8)


class Echo(KeepaliveServerFactory):
    protocol = ServerProtocol

    def messageReceived(self, protocol: HeartbeatProtocol, message: bytes) -> None:
        self.push(protocol, message)


class Client(HeartbeatProtocol):
    def handshakeCompleted(self) -> None:
        self.got: list[bytes] = []

    def messageReceived(self, message: bytes) -> None:
        self.got.append(message)
        waiter, self.factory.waiter = self.factory.waiter, None
        if waiter is not None:
            waiter.callback(message)


def echoed(factory: Any) -> Deferred[bytes]:
    factory.waiter = Deferred()
    return factory.waiter  # type: ignore[no-any-return]


@pytest_twisted.inlineCallbacks
def test_underClientService() -> Any:
    server = Echo(CONFIG)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    # A ClientFactory, so the protocol knows it is the client.
    factory = ClientFactory.forProtocol(Client)
    factory.heartbeatConfig = CONFIG
    factory.waiter = None
    service = ClientService(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        factory,
        retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=0.2),
        # whenConnected fires once the handshake is complete, not before.
        prepareConnection=lambda protocol: protocol.whenReady(),
    )
    service.startService()
    try:
        first = yield service.whenConnected()
        assert first.isOpen
        reply = echoed(factory)
        first.sendMessage(b"hello")  # would raise before the handshake
        assert (yield reply) == b"hello"
        # The server drops it; ClientService reconnects with our policy.
        for p in list(server.connections):
            p.transport.abortConnection()
        yield deferLater(reactor, 0.05, lambda: None)
        second = yield service.whenConnected()
        assert second is not first and second.isOpen
        reply = echoed(factory)
        second.sendMessage(b"again")
        assert (yield reply) == b"again"
    finally:
        yield service.stopService()
        yield port.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.inlineCallbacks
def test_ourFactoryUnderClientServiceTellsTheTruth() -> Any:
    """
    KeepaliveClientFactory given to ClientService: it does not claim to be
    connected after the loss, and names the peer it connected to.
    """
    server = Echo(CONFIG)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    factory = KeepaliveClientFactory(CONFIG)
    service = ClientService(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        factory,
        retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=0.2),
        prepareConnection=lambda protocol: protocol.whenReady(),
    )
    service.startService()
    try:
        protocol = yield service.whenConnected()
        assert factory.state.value == "connected"
        assert factory.currentServer == protocol.peer
        for p in list(server.connections):
            p.transport.abortConnection()
        yield deferLater(reactor, 0.02, lambda: None)
        assert factory.state.value in ("idle", "connected")  # never a stale "connected"
        again = yield service.whenConnected()
        assert again.isOpen and factory.connected is again
        # Out of ClientService's state machine (its whenConnected fires
        # inside a transition) before stopping it.
        yield deferLater(reactor, 0, lambda: None)
    finally:
        yield service.stopService()
        yield port.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)
