"""
FaultProxy on 127.0.0.1 (pytest only): each fault does what it says.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.protocols.wire import Echo

from twisted_keepalive.faultproxy import HIGH_WATER
from twisted_keepalive.testing import FaultProxy


class Collector(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.waiting: list[tuple[int, Deferred[float]]] = []
        self.gone: Deferred[Any] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for entry in list(self.waiting):
            if len(self.data) >= entry[0]:
                self.waiting.remove(entry)
                entry[1].callback(reactor.seconds())

    def until(self, count: int) -> Deferred[float]:
        d: Deferred[float] = Deferred()
        self.waiting.append((count, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(reason.value if reason is not None else None)


class Deaf(Protocol):
    """
    A server that never reads.
    """

    def connectionMade(self) -> None:
        self.transport.pauseProducing()


class Setup:
    def __init__(self, serverProtocol: type[Protocol] = Echo) -> None:
        factory = ServerFactory()
        factory.protocol = serverProtocol
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.proxy = FaultProxy("127.0.0.1", self.port.getHost().port)
        self.proxyPort = self.proxy.listen()

    @pytest_twisted.inlineCallbacks
    def connect(self) -> Any:
        client = Collector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort)
        yield connectProtocol(endpoint, client)
        return client

    @pytest_twisted.inlineCallbacks
    def close(self, client: Collector | None) -> Any:
        if client is not None and client.transport is not None and client.transport.connected:
            client.transport.abortConnection()
        yield self.proxy.stop()
        yield self.port.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.inlineCallbacks
def test_passThroughAndLatency() -> Any:
    setup = Setup()
    client = None
    try:
        client = yield setup.connect()
        client.transport.write(b"x" * 10_000)
        yield client.until(10_000)
        setup.proxy.delay(0.1)
        started = reactor.seconds()
        client.transport.write(b"ping")
        arrived = yield client.until(10_004)
        assert arrived - started >= 0.2  # 0.1 s each way
        assert setup.proxy.up.passed == 10_004
    finally:
        yield setup.close(client)


@pytest_twisted.inlineCallbacks
def test_throttle() -> Any:
    setup = Setup()
    client = None
    try:
        client = yield setup.connect()
        setup.proxy.throttle(100_000, serverToClient=False)
        started = reactor.seconds()
        client.transport.write(b"y" * 50_000)
        arrived = yield client.until(50_000)
        assert arrived - started >= 0.45  # 50 kB at 100 kB/s
    finally:
        yield setup.close(client)


@pytest_twisted.inlineCallbacks
def test_blackholeKeepsTheConnectionOpen() -> Any:
    setup = Setup()
    client = None
    try:
        client = yield setup.connect()
        setup.proxy.blackhole(clientToServer=True, serverToClient=False)
        client.transport.write(b"lost")
        yield deferLater(reactor, 0.2, lambda: None)
        assert bytes(client.data) == b"" and not client.gone.called
        assert setup.proxy.up.dropped == 4
        setup.proxy.restore()
        client.transport.write(b"back")
        yield client.until(4)
        assert bytes(client.data) == b"back"
    finally:
        yield setup.close(client)


@pytest_twisted.inlineCallbacks
def test_resetHalfCloseAndCut() -> Any:
    setup = Setup()
    clients: list[Collector] = []
    try:
        a = yield setup.connect()
        clients.append(a)
        yield deferLater(reactor, 0.05, lambda: None)
        setup.proxy.reset()
        reason = yield a.gone
        assert not isinstance(reason, ConnectionDone)  # a reset, not a clean close

        b = yield setup.connect()
        clients.append(b)
        yield deferLater(reactor, 0.05, lambda: None)
        setup.proxy.halfClose(toClient=True)
        reason = yield b.gone
        assert isinstance(reason, ConnectionDone)  # FIN

        c = yield setup.connect()
        clients.append(c)
        setup.proxy.cutAfter(1_000)
        c.transport.write(b"z" * 600)
        yield c.until(600)
        c.transport.write(b"z" * 600)  # crosses 1,000: both sides reset
        reason = yield c.gone
        assert not isinstance(reason, ConnectionDone)
        assert len(c.data) == 600
    finally:
        yield setup.close(clients[-1] if clients else None)


@pytest_twisted.inlineCallbacks
def test_slowReaderBackpressureKeepsTheProxyBounded() -> Any:
    setup = Setup(Deaf)
    client = None
    try:
        client = yield setup.connect()
        chunk = b"w" * 1_048_576
        worst = 0
        for _ in range(32):  # 32 MiB offered: more than the kernel buffers on the way
            client.transport.write(chunk)
            yield deferLater(reactor, 0.01, lambda: None)
            worst = max(worst, setup.proxy.buffered)
        yield deferLater(reactor, 0.2, lambda: None)
        assert worst <= HIGH_WATER + 65_536, worst
        # The server reads nothing: once the buffers on the way are full the
        # proxy stops reading, and the rest stays with the client.
        assert setup.proxy.up.passed < 32 * len(chunk), setup.proxy.up.passed
    finally:
        yield setup.close(client)
