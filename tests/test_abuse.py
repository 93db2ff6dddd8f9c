"""
Bad input and abuse: a fuzz run of the server's protocol (hypothesis, fixed
example count), and abusers against a live server on 127.0.0.1 that must
keep serving a well-behaved client with bounded memory.
"""

from __future__ import annotations

import gc
import socket
from typing import Any

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive import CloseCode, HeartbeatConfig, HeartbeatProtocol, PeerClosed, Role
from twisted_keepalive.frames import (
    Close,
    FrameDecoder,
    Hello,
    encodeData,
    encodeHello,
    encodePing,
    parseFrame,
)
from twisted_keepalive.server import DisconnectReason, KeepaliveServerFactory

VALID = [
    encodeHello(Hello(1, 1.0, 3.0, 4096, "fuzz")),
    encodePing(1, 2),
    encodeData(b"payload"),
    b"\x00\x00\x00\x05\x90\x00abc",  # an extension frame
]

chunks = st.lists(
    st.one_of(
        st.sampled_from(VALID),
        st.binary(max_size=64),
        st.builds(
            lambda n, t: n.to_bytes(4, "big") + bytes([t, 0]),
            st.integers(0, 2**32 - 1),
            st.integers(0, 255),
        ),
    ),
    max_size=20,
)


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(chunks)
    def test_serverSurvivesAnyInput(self, pieces: list[bytes]) -> None:
        clock = Clock()
        server = HeartbeatProtocol(
            HeartbeatConfig(interval=1.0, timeout=3.0, maxFrame=4096, token=None),
            role=Role.SERVER,
            clock=clock,
        )
        transport = StringTransport()
        server.makeConnection(transport)
        for piece in pieces:
            server.dataReceived(piece)  # must never raise
            assert server.core is not None
            assert server.core._decoder.buffered <= 4096 + 64 + 6
        written = [parseFrame(*raw) for raw in FrameDecoder(1 << 20).feed(transport.value())]
        if transport.disconnecting and not isinstance(server._reason, PeerClosed):
            # We ended it: our last word is a CLOSE with a known code.  (A
            # peer that sent CLOSE first is not answered with one.)
            last = written[-1]
            assert isinstance(last, Close)
            assert last.code in {c.value for c in CloseCode}
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])


class Good(HeartbeatProtocol):
    def __init__(self) -> None:
        super().__init__(
            HeartbeatConfig(interval=0.1, timeout=0.5, clientId="good"), role=Role.CLIENT
        )
        self.ready: Deferred[None] = Deferred()
        self.gone: Deferred[Any] = Deferred()

    def handshakeCompleted(self) -> None:
        self.ready.callback(None)

    def connectionClosed(self, reason: Failure) -> None:
        self.gone.callback(reason.value)


class Raw(Protocol):
    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.received = bytearray()
        self.gone: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


def closeCode(data: bytes | bytearray) -> int | None:
    frames = [parseFrame(*raw) for raw in FrameDecoder(1 << 20).feed(bytes(data))]
    return frames[-1].code if frames and isinstance(frames[-1], Close) else None


@pytest_twisted.inlineCallbacks
def test_abusersAgainstALiveServer() -> Any:
    factory = KeepaliveServerFactory(
        HeartbeatConfig(
            interval=1.0, timeout=2.0, handshakeTimeout=0.3, maxFrame=4096, token=b"right"
        ),
        maxConnections=200,
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=512)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    gc.collect()
    before = sum(isinstance(o, HeartbeatProtocol) for o in gc.get_objects())
    good = Good()
    good._config = HeartbeatConfig(interval=0.1, timeout=0.5, clientId="good", token=b"right")
    try:
        yield connectProtocol(endpoint, good)
        yield good.ready

        # Oversized length prefix, before the handshake.
        big = Raw(b"\xff\xff\xff\xff\x04\x00")
        yield connectProtocol(endpoint, big)
        yield big.gone
        assert closeCode(big.received) == CloseCode.FRAME_TOO_LARGE

        # Wrong token: refused, and the DATA after the HELLO never reaches anyone.
        intruder = Raw(encodeHello(Hello(1, 1.0, 3.0, 4096, "x", b"wrong")) + encodeData(b"!"))
        yield connectProtocol(endpoint, intruder)
        yield intruder.gone
        assert closeCode(intruder.received) == CloseCode.AUTH_FAILED

        # Slow-loris: one byte of HELLO at a time, never finishing.
        loris = Raw()
        yield connectProtocol(endpoint, loris)
        hello = encodeHello(Hello(1, 1.0, 3.0, 4096, None, b"right"))
        for i in range(5):
            if loris.gone.called:
                break
            loris.transport.write(hello[i : i + 1])
            yield deferLater(reactor, 0.1, lambda: None)
        yield loris.gone

        # Ping flood after a valid handshake.
        flood = Raw(hello)
        yield connectProtocol(endpoint, flood)
        for i in range(20):
            if flood.gone.called:
                break
            flood.transport.write(encodePing(i + 1, 0))
            yield deferLater(reactor, 0.005, lambda: None)
        yield flood.gone
        assert closeCode(flood.received) == CloseCode.TOO_MANY_PINGS

        # Thousands of connect/disconnect cycles, 50 at a time.
        for _ in range(40):
            socks = []
            for _ in range(50):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port.getHost().port))
                socks.append(s)
            yield deferLater(reactor, 0.005, lambda: None)
            for s in socks:
                s.close()
        yield deferLater(reactor, 0.5, lambda: None)  # handshake timeouts run out

        assert good.isOpen and not good.gone.called  # served throughout
        assert good.stats.pongsReceived >= 10
        assert [i.clientId for i in factory] == ["good"]
        counts = {r.value: n for r, n in factory.counts.items() if n}
        assert counts.get("protocol-error", 0) >= 1
        assert counts.get("auth") == 1
        assert counts.get("too-many-pings") == 1
        assert counts.get("handshake-timeout", 0) + counts.get("lost", 0) >= 1
        print(f"\nabuse: {counts}")
    finally:
        good.close()
        yield deferLater(reactor, 0.1, lambda: None)
        yield port.stopListening()
        yield factory.shutdown(timeout=0.5)
        yield deferLater(reactor, 0.1, lambda: None)
    gc.collect()
    after = sum(isinstance(o, HeartbeatProtocol) for o in gc.get_objects())
    assert after - before <= 1, (before, after)  # nothing kept from 2,000+ connections
    assert not factory.connections and not factory.byClientId
    assert factory.counts[DisconnectReason.EVICTED] == 0
