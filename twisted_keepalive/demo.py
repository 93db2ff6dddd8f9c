"""
A two-minute tour on 127.0.0.1: a server and a client heartbeat; the server
freezes (stops reading, sends nothing, closes nothing: what a hung process
or a dropped NAT mapping looks like); the client notices within its
timeout, retries with backoff while the server is down, and is back as soon
as the server returns.

Run it with C{python -m twisted_keepalive.demo}.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import ServerFactory
from twisted.python.failure import Failure

from .backoff import backoffPolicy
from .client import ClientState, KeepaliveClientFactory
from .config import HeartbeatConfig
from .heartbeat import HeartbeatProtocol

reactor: Any = _reactor
START = reactor.seconds()


def say(message: str) -> None:
    print(f"[{reactor.seconds() - START:6.2f}s] {message}", flush=True)


class EchoServer(HeartbeatProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.sendMessage(message)


class DemoServerFactory(ServerFactory):
    protocol = EchoServer
    heartbeatConfig = HeartbeatConfig(interval=1.0, timeout=4.0)

    def __init__(self) -> None:
        self.live: list[HeartbeatProtocol] = []

    def buildProtocol(self, addr: Any) -> HeartbeatProtocol:
        p = EchoServer()
        p.factory = self
        self.live.append(p)
        return p


class DemoClient(HeartbeatProtocol):
    def pongReceived(self, rtt: float) -> None:
        stats = self.stats
        say(
            f"heartbeat: PONG, rtt {rtt * 1000:.3f} ms "
            f"(srtt {(stats.srtt or 0) * 1000:.3f} ms, {stats.pingsSent} pings sent)"
        )

    def messageReceived(self, message: bytes) -> None:
        say(f"message echoed back: {message.decode()}")

    def connectionClosed(self, reason: Failure) -> None:
        say(f"connection lost: {type(reason.value).__name__}: {reason.value}")


class Demo:
    def __init__(self) -> None:
        self.serverFactory = DemoServerFactory()
        self.port: Any = reactor.listenTCP(0, self.serverFactory, interface="127.0.0.1")
        self.portNumber = self.port.getHost().port
        self.client = KeepaliveClientFactory(
            HeartbeatConfig(interval=0.5, timeout=1.5),
            servers=[f"127.0.0.1:{self.portNumber}"],
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=2.0, jitter="equal"),
            stableAfter=2.0,
            connectTimeout=2.0,
        )
        self.client.protocol = DemoClient
        self.client.addStateObserver(self.stateChanged)
        self.recovered = False
        self.frozenAt: float | None = None

    def stateChanged(self, old: ClientState, new: ClientState) -> None:
        detail = ""
        if new is ClientState.WAITING and self.client.lastDelay is not None:
            detail = f" (next attempt in {self.client.lastDelay:.2f}s)"
            if old is ClientState.CONNECTING:
                detail += f" after: {self.client.lastError}"
        if new is ClientState.CONNECTED:
            detail = f" to {self.client.currentServer}"
        say(f"client state: {old.value} -> {new.value}{detail}")
        if new is ClientState.CONNECTED and self.frozenAt is not None and not self.recovered:
            self.recovered = True
            say(f"recovered {reactor.seconds() - self.frozenAt:.2f}s after the freeze")
            self.client.sendMessage(b"hello again")
            reactor.callLater(1.6, self.finish)

    def start(self) -> None:
        say(f"server listening on 127.0.0.1:{self.portNumber}; client interval 0.5s, timeout 1.5s")
        self.client.connect()
        reactor.callLater(0.3, self.client.sendMessage, b"hello")
        reactor.callLater(2.2, self.freeze)
        reactor.callLater(6.0, self.restart)
        reactor.callLater(20.0, self.fail)

    def freeze(self) -> None:
        self.frozenAt = reactor.seconds()
        say("server FREEZES: it stops reading and stops accepting; no FIN, no RST")
        for p in self.serverFactory.live:
            if p.transport is not None:
                p.transport.pauseProducing()  # type: ignore[attr-defined]
        self.port.stopListening()

    def restart(self) -> None:
        say(f"server restarts on the same port {self.portNumber}")
        for p in self.serverFactory.live:
            if p.transport is not None:
                p.transport.abortConnection()  # type: ignore[attr-defined]
        self.serverFactory.live.clear()
        self.port = reactor.listenTCP(self.portNumber, self.serverFactory, interface="127.0.0.1")

    def finish(self) -> None:
        say("done: heartbeats, a detected outage, backoff, and recovery")
        self.client.stopTrying()
        reactor.callLater(0.2, reactor.stop)

    def fail(self) -> None:
        say("FAILED: the client did not recover within 20 s")
        self.client.stopTrying()
        reactor.stop()
        self.exitCode = 1


def main() -> int:
    demo = Demo()
    demo.exitCode = 0
    reactor.callWhenRunning(demo.start)
    reactor.run()
    return demo.exitCode


if __name__ == "__main__":
    sys.exit(main())
