"""
Real sockets on 127.0.0.1, driven by the real reactor (pytest-twisted).

These are plain functions: pytest runs them; trial, which only collects
TestCase classes, skips this module.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol, HeartbeatTimeout, Role
from twisted_keepalive.testing import FaultProxy


class Watched(HeartbeatProtocol):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.ready: Deferred[None] = Deferred()
        self.gone: Deferred[Any] = Deferred()

    def handshakeCompleted(self) -> None:
        self.ready.callback(None)

    def connectionClosed(self, reason: Any) -> None:
        self.gone.callback(reason.value)


class Recording(ServerFactory):
    """
    A server factory that keeps every protocol it builds in C{into}.
    """

    heartbeatConfig = HeartbeatConfig(interval=1.0, timeout=2.0)

    def __init__(self, into: list[Any], protocol: type[Watched] | None = None) -> None:
        self.into = into
        self.kind = protocol or Watched

    def buildProtocol(self, addr: Any) -> Watched:
        p = self.kind(role=Role.SERVER)
        p.factory = self
        self.into.append(p)
        return p


@pytest_twisted.inlineCallbacks
def test_silentPeerDetectedWithinBound() -> Any:
    servers: list[Watched] = []

    port = reactor.listenTCP(0, Recording(servers), interface="127.0.0.1")
    proxy = FaultProxy("127.0.0.1", port.getHost().port)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.listen())
        interval, timeout = 0.1, 0.5
        client = Watched(HeartbeatConfig(interval=interval, timeout=timeout), role=Role.CLIENT)
        yield connectProtocol(endpoint, client)
        yield client.ready
        yield deferLater(reactor, 0.35, lambda: None)
        assert client.stats.pongsReceived >= 2
        assert client.stats.srtt is not None and client.stats.srtt < timeout

        proxy.propagateClose = False  # the server must find out on its own
        proxy.blackhole()  # packets vanish both ways; no FIN, no RST
        cut = reactor.seconds()
        reason = yield client.gone
        detected = reactor.seconds() - cut
        assert isinstance(reason, HeartbeatTimeout)
        # Dead exactly `timeout` after the last inbound byte, which came at or
        # before the cut; allow for the reactor's scheduling.
        assert reason.silence >= timeout
        assert detected <= timeout + 0.25, detected
        # The server, hearing nothing through the blackhole, evicts too.
        evicted = yield servers[0].gone
        assert isinstance(evicted, HeartbeatTimeout)
    finally:
        yield proxy.stop()
        yield port.stopListening()
    assert [c for c in reactor.getDelayedCalls() if "IdleTimer" in repr(c)] == []


@pytest_twisted.inlineCallbacks
def test_failoverWhenPrimaryIsKilled() -> Any:
    """
    The source texts' scenario: two servers, the client on A, A is killed
    (its connections reset, its port closed); the client is on B within the
    backoff bound, with no human action.
    """
    from twisted_keepalive.backoff import jitteredBackoff
    from twisted_keepalive.client import ClientState, KeepaliveClientFactory

    live: list[Watched] = []

    portA = reactor.listenTCP(0, Recording(live), interface="127.0.0.1")
    portB = reactor.listenTCP(0, Recording(live), interface="127.0.0.1")
    labelA = f"127.0.0.1:{portA.getHost().port}"
    labelB = f"127.0.0.1:{portB.getHost().port}"
    maxDelay = 0.5
    factory = KeepaliveClientFactory(
        HeartbeatConfig(interval=0.1, timeout=0.5),
        servers=[labelA, labelB],
        retryPolicy=jitteredBackoff(initialDelay=0.2, maxDelay=maxDelay),
        connectTimeout=1.0,
    )
    try:
        factory.connect()
        yield factory.whenConnected()
        assert factory.currentServer == labelA
        onB: Deferred[None] = Deferred()

        def observe(old: ClientState, new: ClientState) -> None:
            if new is ClientState.CONNECTED and not onB.called:
                onB.callback(None)

        factory.addStateObserver(observe)
        killed = reactor.seconds()
        yield portA.stopListening()
        for p in list(live):
            p.transport.abortConnection()  # RST, as when the process dies
        yield onB
        elapsed = reactor.seconds() - killed
        assert factory.currentServer == labelB
        # One backoff (at most maxDelay) plus a refused attempt on A.
        assert elapsed <= maxDelay + 0.5, elapsed
        assert factory.reconnects == 1
    finally:
        factory.stopTrying()
        yield portB.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)
        for p in live:
            if p.transport is not None and p.transport.connected:
                p.transport.abortConnection()
        yield deferLater(reactor, 0.05, lambda: None)


class Echo(Watched):
    def messageReceived(self, message: bytes) -> None:
        self.sendMessage(message)


@pytest_twisted.inlineCallbacks
def test_serverRestartedOnSamePort() -> Any:
    from twisted_keepalive.backoff import jitteredBackoff
    from twisted_keepalive.client import ClientState, KeepaliveClientFactory

    live: list[Watched] = []

    port = reactor.listenTCP(0, Recording(live, Echo), interface="127.0.0.1")
    number = port.getHost().port
    factory = KeepaliveClientFactory(
        HeartbeatConfig(interval=0.1, timeout=0.5),
        servers=[f"127.0.0.1:{number}"],
        retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=0.2),
    )
    states: list[ClientState] = []
    factory.addStateObserver(lambda old, new: states.append(new))
    try:
        factory.connect()
        yield factory.whenConnected()
        yield port.stopListening()
        for p in list(live):
            p.transport.abortConnection()
        live.clear()
        yield deferLater(reactor, 0.5, lambda: None)  # refused meanwhile
        assert factory.state is not ClientState.CONNECTED
        factory.sendMessage(b"sent while down")
        port = reactor.listenTCP(number, Recording(live, Echo), interface="127.0.0.1")
        protocol = yield factory.whenConnected()
        yield live[0].ready
        yield deferLater(reactor, 0.1, lambda: None)
        assert live[0].stats.messagesIn == 1  # the queued message arrived
        assert protocol.stats.messagesIn == 1  # and was echoed back
        assert states.count(ClientState.CONNECTED) == 2
        assert factory.failures >= 1
    finally:
        factory.stopTrying()
        yield port.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)
        for p in live:
            if p.transport is not None and p.transport.connected:
                p.transport.abortConnection()
        yield deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.inlineCallbacks
def test_connectTimeoutAgainstABacklogThatNeverAccepts() -> Any:
    """
    A listening socket that never accepts, its backlog filled: the kernel
    drops further SYNs, as a blackholed host would.  The attempt must end
    at the connect timeout, not the OS default.
    """
    import socket

    from twisted_keepalive.backoff import jitteredBackoff
    from twisted_keepalive.client import GaveUp, KeepaliveClientFactory

    listener = socket.socket()
    fillers: list[socket.socket] = []
    factory = None
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield deferLater(reactor, 0.1, lambda: None)
        factory = KeepaliveClientFactory(
            HeartbeatConfig(interval=0.1, timeout=0.5),
            servers=[f"127.0.0.1:{port}"],
            retryPolicy=jitteredBackoff(initialDelay=10.0, maxDelay=10.0),
            connectTimeout=0.3,
        )
        started = reactor.seconds()
        failed = factory.whenConnected(failAfterFailures=1)
        factory.connect()
        try:
            yield failed
        except GaveUp:
            pass
        else:
            raise AssertionError("connected to a socket that never accepts")
        elapsed = reactor.seconds() - started
        assert "no connection within 0.3s" in (factory.lastError or ""), factory.lastError
        assert 0.3 <= elapsed < 1.5, elapsed
    finally:
        if factory is not None:
            factory.stopTrying()
        for s in [*fillers, listener]:
            s.close()
        yield deferLater(reactor, 0.05, lambda: None)
