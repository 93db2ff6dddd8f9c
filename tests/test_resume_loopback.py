"""
Sessions over real sockets on 127.0.0.1: 100,000 messages each way through a
fault proxy that drops the connection 100 times (resets and blackholes
mixed) arrive exactly once and in order.

A plain function (pytest runs it; trial skips this module).
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import LoopingCall, deferLater

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import ClientState, KeepaliveClientFactory
from twisted_keepalive.server import KeepaliveServerFactory, ServerProtocol
from twisted_keepalive.testing import FaultProxy

COUNT = 100_000
DROPS = 100
PER_TICK = 60  # messages per side per 10 ms: the transfer outlasts the faults
WINDOW = 4_000  # unacknowledged messages a sender allows itself
CONFIG = HeartbeatConfig(interval=0.05, timeout=0.2, handshakeTimeout=1.0)

#: Figures for docs/reliability.md, printed with -s.
FIGURES: dict[str, Any] = {}


class Received:
    """Messages numbered 0, 1, 2...: checks order and uniqueness as they come."""

    def __init__(self) -> None:
        self.next = 0
        self.wrong: list[tuple[int, int]] = []

    def add(self, message: bytes) -> None:
        n = int(message)
        if n != self.next:
            self.wrong.append((self.next, n))
        self.next = n + 1


class Server(ServerProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.factory.received.add(message)


class ServerFactory(KeepaliveServerFactory):
    protocol = Server

    def __init__(self) -> None:
        super().__init__(CONFIG, sessionGrace=30.0, sessionBuffer=2 * WINDOW)
        self.received = Received()
        self.sent = 0
        self.current: HeartbeatProtocol | None = None

    def clientConnected(self, protocol: HeartbeatProtocol) -> None:
        self.current = protocol

    def pump(self) -> None:
        p = self.current
        if p is None or not p.isOpen or p.outputPaused or p.session is None:
            return
        while self.sent < COUNT and len(p.session) < WINDOW:
            p.sendMessage(b"%d" % self.sent)
            self.sent += 1
            if self.sent % PER_TICK == 0:
                return


class Client(HeartbeatProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.factory.received.add(message)


@pytest_twisted.inlineCallbacks
def test_hundredThousandEachWayThroughHundredDrops() -> Any:
    server = ServerFactory()
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    proxy = FaultProxy("127.0.0.1", port.getHost().port)
    client = KeepaliveClientFactory(
        CONFIG,
        servers=[f"127.0.0.1:{proxy.listen()}"],
        resume=True,
        queueSize=2 * WINDOW,
        retryPolicy=jitteredBackoff(initialDelay=0.01, maxDelay=0.05),
        connectTimeout=1.0,
        stableAfter=0.2,
    )
    client.protocol = Client
    client.received = Received()
    session = client.resumeSession
    assert session is not None
    state = {"sent": 0}

    def pumpClient() -> None:
        while state["sent"] < COUNT and len(session) < WINDOW:
            client.sendMessage(b"%d" % state["sent"])
            state["sent"] += 1
            if state["sent"] % PER_TICK == 0:
                return

    def pumpBoth() -> None:
        pumpClient()
        server.pump()

    loop = LoopingCall(pumpBoth)
    started = time.monotonic()
    resets = blackholes = 0
    try:
        client.connect()
        yield client.whenConnected()
        loop.start(0.01)
        while resets + blackholes < DROPS:
            yield deferLater(reactor, 0.05, lambda: None)
            if client.state is not ClientState.CONNECTED:
                continue
            if (resets + blackholes) % 3 == 2:
                # Packets vanish: both sides must find out by silence.
                proxy.propagateClose = False
                proxy.blackhole()
                while client.state is ClientState.CONNECTED:
                    yield deferLater(reactor, 0.02, lambda: None)
                proxy.reset()  # the proxy forgets the dead flow
                proxy.restore()
                proxy.propagateClose = True
                blackholes += 1
            else:
                proxy.reset()
                resets += 1
        faultsDone = time.monotonic() - started
        deadline = time.monotonic() + 120
        while (
            client.received.next < COUNT or server.received.next < COUNT or len(session)
        ) and time.monotonic() < deadline:
            yield deferLater(reactor, 0.05, lambda: None)
        elapsed = time.monotonic() - started
        got = client.received
        assert (resets, blackholes) == (67, 33)
        assert server.received.wrong == [] and got.wrong == []  # no gap, duplicate, reorder
        assert (server.received.next, got.next) == (COUNT, COUNT)
        assert client.sessionsLost == 0 and server.sessionsExpired == 0
        assert server.sessionsResumed >= DROPS, server.sessionsResumed
        assert len(session) == 0  # everything acknowledged in the end
        FIGURES["resume"] = {
            "messages each way": COUNT,
            "resets": resets,
            "blackholes": blackholes,
            "resumes": server.sessionsResumed,
            "lost": 0,
            "duplicated": 0,
            "duplicates dropped by receivers": session.duplicates
            + sum(s.duplicates for s in server.sessions.values()),
            "faults over s": round(faultsDone, 1),
            "total s": round(elapsed, 1),
        }
        print(f"\nresume: {FIGURES['resume']}")
    finally:
        if loop.running:
            loop.stop()
        client.stopTrying()
        yield deferLater(reactor, 0.05, lambda: None)
        yield proxy.stop()
        yield server.shutdown(timeout=0.5)
        yield port.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)
