"""
The adaptive interval on real sockets, through FaultProxy's NAT mode (a
flow idle for 0.6 s is forgotten: bytes vanish both ways, no FIN, no RST):
the client learns to ping just inside it, then survives a soak of ten NAT
periods with no death, and its session delivers every message exactly
once across the deaths learning cost.  A plain function (pytest runs it;
trial skips this module).
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import LoopingCall, deferLater

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import ClientState, KeepaliveClientFactory
from twisted_keepalive.server import KeepaliveServerFactory
from twisted_keepalive.testing import FaultProxy

NAT = 0.6


class Server(KeepaliveServerFactory):
    def messageReceived(self, protocol: Any, message: bytes) -> None:
        self.received.append(message)


class Client(HeartbeatProtocol):
    pass


@pytest_twisted.inlineCallbacks
def test_learnsTheNatThroughARealProxy() -> Any:
    server = Server(HeartbeatConfig(interval=0.5, timeout=10.0), sessionGrace=30.0)
    server.received = []
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    proxy = FaultProxy("127.0.0.1", port.getHost().port)
    proxy.nat(NAT)
    client = KeepaliveClientFactory(
        HeartbeatConfig(interval=0.1, timeout=0.3, adaptiveInterval=2.0),
        servers=[f"127.0.0.1:{proxy.listen()}"],
        resume=True,
        retryPolicy=jitteredBackoff(initialDelay=0.02, maxDelay=0.1),
        connectTimeout=1.0,
        stableAfter=0.1,
    )
    client.protocol = Client
    adaptive = client.adaptive
    assert adaptive is not None
    sent = {"n": 0}

    def send() -> None:
        sent["n"] += 1
        client.sendMessage(b"%d" % sent["n"])

    sender = LoopingCall(send)
    try:
        client.connect()
        yield client.whenConnected()
        sender.start(1.3, now=False)  # sparse: idle gaps remain to learn from
        started = reactor.seconds()
        while adaptive.learning and reactor.seconds() - started < 30:
            yield deferLater(reactor, 0.05, lambda: None)
        learnedAfter = reactor.seconds() - started
        assert not adaptive.learning, vars(adaptive)
        assert 0.6 * NAT <= adaptive.current < NAT, adaptive.current
        deaths = adaptive.deaths
        assert proxy.natForgotten == deaths >= 1  # each death was the NAT's doing
        # Ten NAT periods with no death.
        connections = proxy.accepted
        yield deferLater(reactor, 10 * NAT, lambda: None)
        assert proxy.accepted == connections and adaptive.deaths == deaths
        assert client.state is ClientState.CONNECTED
        sender.stop()
        while len(client.resumeSession or ()) and reactor.seconds() - started < 60:
            yield deferLater(reactor, 0.05, lambda: None)
        expected = [b"%d" % i for i in range(1, sent["n"] + 1)]
        assert server.received == expected  # exactly once, in order, across the deaths
        print(
            f"\nadaptive: learned {adaptive.current:.3f} s (NAT {NAT} s) after "
            f"{learnedAfter:.1f} s and {deaths} deaths; {sent['n']} messages exactly once"
        )
    finally:
        if sender.running:
            sender.stop()
        client.stopTrying()
        yield deferLater(reactor, 0.05, lambda: None)
        yield proxy.stop()
        yield server.shutdown(timeout=0.5)
        yield port.stopListening()
