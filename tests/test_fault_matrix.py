"""
The fault matrix on real sockets (pytest only): each fault is injected
through FaultProxy between a KeepaliveClientFactory and a server; the test
asserts detection within the configured bound and recovery, and records
how many application messages were sent, echoed back and received.

Settings: interval 0.1 s, timeout 0.4 s, backoff 0.05..0.2 s.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall, deferLater

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol, HeartbeatTimeout
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import ClientState, KeepaliveClientFactory
from twisted_keepalive.server import KeepaliveServerFactory
from twisted_keepalive.testing import FaultProxy

INTERVAL, TIMEOUT, MAX_DELAY = 0.1, 0.4, 0.2
SLACK = 0.3  # the real reactor's scheduling on a shared machine
FIGURES: dict[str, dict[str, Any]] = {}


class Echo(KeepaliveServerFactory):
    received = 0

    def messageReceived(self, protocol: HeartbeatProtocol, message: bytes) -> None:
        self.received += 1
        protocol.sendMessage(message)


class Counting(HeartbeatProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.factory.echoed += 1


class Rig:
    """
    Server, proxy, client and a 50 messages/s application load.
    """

    def __init__(self, serverFactory: Any = None) -> None:
        self.server = serverFactory or Echo(HeartbeatConfig(interval=1.0, timeout=2.0))
        self.port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.proxy = FaultProxy("127.0.0.1", self.port.getHost().port)
        self.client = KeepaliveClientFactory(
            HeartbeatConfig(interval=INTERVAL, timeout=TIMEOUT),
            servers=[f"127.0.0.1:{self.proxy.listen()}"],
            retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=MAX_DELAY),
            stableAfter=0.3,
            connectTimeout=0.5,
        )
        self.client.protocol = Counting
        self.client.echoed = 0
        self.sent = 0
        self.load = LoopingCall(self.send)

    def send(self) -> None:
        try:
            self.client.sendMessage(b"m%d" % self.sent)
            self.sent += 1
        except Exception:
            pass

    @pytest_twisted.inlineCallbacks
    def start(self) -> Any:
        self.client.connect()
        yield self.client.whenConnected()
        self.load.start(0.02)
        yield deferLater(reactor, 0.3, lambda: None)

    def until(self, check: Any, timeout: float) -> Deferred[float]:
        started = reactor.seconds()
        done: Deferred[float] = Deferred()

        def poll() -> None:
            if check():
                done.callback(reactor.seconds() - started)
            elif reactor.seconds() - started > timeout:
                done.errback(AssertionError(f"not within {timeout}s"))
            else:
                reactor.callLater(0.01, poll)

        poll()
        return done

    def record(self, name: str, **figures: Any) -> None:
        FIGURES[name] = {
            "sent": self.sent,
            "echoed": self.client.echoed,
            "server received": getattr(self.server, "received", None),
            **figures,
        }
        print(f"\n{name}: {FIGURES[name]}")

    @pytest_twisted.inlineCallbacks
    def stop(self) -> Any:
        if self.load.running:
            self.load.stop()
        self.client.stopTrying()
        yield deferLater(reactor, 0.05, lambda: None)
        yield self.proxy.stop()
        yield self.port.stopListening()
        shutdown = getattr(self.server, "shutdown", None)
        if shutdown is not None:
            yield shutdown(timeout=0.5)
        yield deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.inlineCallbacks
def detectAndRecover(name: str, inject: Any, heal: Any) -> Any:
    rig = Rig()
    try:
        yield rig.start()
        before = rig.client.heartbeatTimeouts
        inject(rig.proxy)
        detected = yield rig.until(lambda: rig.client.heartbeatTimeouts > before, TIMEOUT + 2)
        assert detected <= TIMEOUT + SLACK, detected
        heal(rig.proxy)
        recovered = yield rig.until(lambda: rig.client.state is ClientState.CONNECTED, 5)
        assert recovered <= MAX_DELAY + 0.5 + SLACK, recovered
        yield deferLater(reactor, 0.2, lambda: None)
        rig.load.stop()
        yield deferLater(reactor, 0.2, lambda: None)
        rig.record(name, detected=round(detected, 3), recovered=round(recovered, 3))
        assert rig.client.echoed > 0 and rig.sent >= rig.client.echoed
    finally:
        yield rig.stop()


def test_blackholeBothWays() -> Any:
    return detectAndRecover("blackhole both ways", lambda p: p.blackhole(), lambda p: p.restore())


def test_blackholeClientToServerOnly() -> Any:
    return detectAndRecover(
        "blackhole client->server",
        lambda p: p.blackhole(clientToServer=True, serverToClient=False),
        lambda p: p.restore(),
    )


def test_blackholeServerToClientOnly() -> Any:
    return detectAndRecover(
        "blackhole server->client",
        lambda p: p.blackhole(clientToServer=False, serverToClient=True),
        lambda p: p.restore(),
    )


@pytest_twisted.inlineCallbacks
def test_resetIsNoticedAtOnceAndRecovered() -> Any:
    rig = Rig()
    try:
        yield rig.start()
        reconnects = rig.client.reconnects
        rig.proxy.reset()
        took = yield rig.until(lambda: rig.client.reconnects > reconnects, 5)
        assert took <= MAX_DELAY + 0.5 + SLACK, took
        rig.record("reset (RST)", recovered=round(took, 3))
    finally:
        yield rig.stop()


class Flapper(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_flappingServerMeetsAGrowingDelay() -> Any:
    flapping = ServerFactory()
    flapping.protocol = Flapper
    rig = Rig(flapping)
    try:
        rig.client.connect()
        yield deferLater(reactor, 2.0, lambda: None)
        attempts = rig.client.attempts
        # Delays 0.05, 0.1, 0.2, 0.2, ... (full jitter: at most those): a tight
        # loop would make hundreds of attempts in 2 s.
        assert attempts <= 40, attempts
        assert rig.client.failures >= 3
        rig.record("flapping server", attempts=attempts)
    finally:
        yield rig.stop()


@pytest_twisted.inlineCallbacks
def test_slowReaderBoundedAndStillJudged() -> Any:
    """
    The server stops reading (its process is busy): our writes pile up, the
    client's unsent output stays bounded, and the heartbeat still declares
    the peer dead on time because it judges by what it receives.
    """

    stalls: list[Any] = []

    class Stalling(Echo):
        def clientConnected(self, protocol: HeartbeatProtocol) -> None:
            # The first connection only, and owned by the test: the client
            # reconnects after the abort, possibly while the rig stops.
            if not stalls:
                stalls.append(reactor.callLater(0.2, protocol.transport.pauseProducing))

    rig = Rig(Stalling(HeartbeatConfig(interval=1.0, timeout=30.0)))
    rig.client.heartbeatConfig = HeartbeatConfig(
        interval=INTERVAL, timeout=TIMEOUT, maxPendingOutput=256 * 1024
    )
    try:
        rig.client.connect()
        protocol = yield rig.client.whenConnected()
        big = b"x" * 65_536
        started = reactor.seconds()
        while protocol.isOpen and reactor.seconds() - started < 3:
            protocol.sendMessage(big)  # far faster than anything drains
            yield deferLater(reactor, 0.005, lambda: None)
        took = reactor.seconds() - started
        assert not protocol.isOpen
        yield rig.until(lambda: protocol.closeReason is not None, 2)  # connectionLost ran
        reason = protocol.closeReason.value
        assert protocol._pendingWhilePaused <= 256 * 1024
        assert took <= 0.2 + TIMEOUT + SLACK, took
        assert isinstance(reason, HeartbeatTimeout), reason
        rig.record("slow reader", ended_by=type(reason).__name__, after=round(took, 3))
    finally:
        for call in stalls:
            if call.active():
                call.cancel()
        yield rig.stop()


@pytest_twisted.inlineCallbacks
def test_unresolvableHostNameIsReportedAndRetried() -> Any:
    """
    A name that does not resolve: a clear error, paced retries, nothing
    sent anywhere (the test's resolver answers "no addresses" itself).
    """
    from twisted.internet.interfaces import IHostnameResolver, IHostResolution
    from zope.interface import implementer

    @implementer(IHostResolution)
    class Resolution:
        def __init__(self, name: str) -> None:
            self.name = name

        def cancel(self) -> None:
            pass

    @implementer(IHostnameResolver)
    class Nowhere:
        asked: list[str] = []

        def resolveHostName(
            self,
            resolutionReceiver: Any,
            hostName: str,
            portNumber: int = 0,
            addressTypes: Any = None,
            transportSemantics: str = "TCP",
        ) -> Any:
            self.asked.append(hostName)
            resolution = Resolution(hostName)
            resolutionReceiver.resolutionBegan(resolution)
            resolutionReceiver.resolutionComplete()
            return resolution

    previous = reactor.installNameResolver(Nowhere())
    client = KeepaliveClientFactory(
        HeartbeatConfig(interval=INTERVAL, timeout=TIMEOUT),
        servers=["no-such-host.invalid:9000"],
        retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=MAX_DELAY),
    )
    try:
        waiter = client.whenConnected(failAfterFailures=3)
        client.connect()
        try:
            yield waiter
        except Exception as e:
            failure = e
        assert type(failure).__name__ == "GaveUp"
        assert "no-such-host.invalid" in (client.lastError or ""), client.lastError
        assert client.failures >= 3 and client.state is ClientState.WAITING
        assert Nowhere.asked and set(Nowhere.asked) == {"no-such-host.invalid"}
        FIGURES["unresolvable host"] = {"error": client.lastError, "failures": client.failures}
        print(f"\nunresolvable host: {FIGURES['unresolvable host']}")
    finally:
        client.stopTrying()
        reactor.installNameResolver(previous)
        yield deferLater(reactor, 0.05, lambda: None)


def selfSigned(directory: str) -> tuple[str, str]:
    """
    A fresh key and self-signed certificate for 127.0.0.1, as PEM files.
    """
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certPem = cert.public_bytes(serialization.Encoding.PEM)
    keyPem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = os.path.join(directory, "server.pem")
    with open(pem, "wb") as f:
        f.write(keyPem + certPem)
    ca = os.path.join(directory, "ca")
    os.mkdir(ca)
    with open(os.path.join(ca, "ca.pem"), "wb") as f:
        f.write(certPem)
    return pem, ca


@pytest_twisted.inlineCallbacks
def test_tlsHandshakeFailureThenTrustedTls() -> Any:
    """
    TLS with a certificate the client does not trust fails cleanly and is
    retried; trusting it, heartbeats run over TLS.
    """
    import tempfile

    from twisted.internet.endpoints import serverFromString

    directory = tempfile.mkdtemp(prefix="keepalive-tls-")
    pem, ca = selfSigned(directory)
    server = Echo(HeartbeatConfig(interval=1.0, timeout=2.0))
    port = yield serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}"
    ).listen(server)
    number = port.getHost().port
    untrusting = trusting = None
    try:
        untrusting = KeepaliveClientFactory(
            HeartbeatConfig(interval=INTERVAL, timeout=TIMEOUT),
            servers=[f"tls:127.0.0.1:{number}"],
            retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=MAX_DELAY),
            connectTimeout=2.0,
        )
        waiter = untrusting.whenConnected(failAfterFailures=2)
        untrusting.connect()
        try:
            yield waiter
            raise AssertionError("connected to an untrusted certificate")
        except Exception as e:
            assert type(e).__name__ == "GaveUp", e
        assert "certificate verify failed" in (untrusting.lastError or ""), untrusting.lastError
        untrusting.stopTrying()

        trusting = KeepaliveClientFactory(
            HeartbeatConfig(interval=INTERVAL, timeout=TIMEOUT),
            servers=[f"tls:127.0.0.1:{number}:trustRoots={ca}"],
            retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=MAX_DELAY),
        )
        trusting.connect()
        protocol = yield trusting.whenConnected()
        yield deferLater(reactor, 0.35, lambda: None)
        assert protocol.stats.pongsReceived >= 2
        FIGURES["tls"] = {
            "untrusted": untrusting.lastError,
            "trusted srtt ms": round((protocol.stats.srtt or 0) * 1000, 3),
        }
        print(f"\ntls: {FIGURES['tls']}")
    finally:
        for factory in (untrusting, trusting):
            if factory is not None:
                factory.stopTrying()
        yield deferLater(reactor, 0.1, lambda: None)
        yield port.stopListening()
        yield server.shutdown(timeout=0.5)
        yield deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.inlineCallbacks
def test_refusedThenServerAppears() -> Any:
    """
    Nothing listens yet: each attempt is refused at once, retries are paced
    by the backoff, and the client connects as soon as the server appears.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        number = s.getsockname()[1]
    client = KeepaliveClientFactory(
        HeartbeatConfig(interval=INTERVAL, timeout=TIMEOUT),
        servers=[f"127.0.0.1:{number}"],
        # Equal jitter: each wait is between half and all of its delay, so
        # the count of attempts in a second is bounded both ways.
        retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=MAX_DELAY, jitter="equal"),
    )
    server = Echo(HeartbeatConfig(interval=1.0, timeout=2.0))
    port = None
    try:
        client.connect()
        yield deferLater(reactor, 1.0, lambda: None)
        assert "refused" in (client.lastError or "").lower(), client.lastError
        # Waits of 0.025-0.05, 0.05-0.1, then 0.1-0.2 s: 7 to 12 attempts in
        # one second (fewer if the reactor is slow, never more).
        assert 4 <= client.attempts <= 12, client.attempts
        attempts = client.attempts
        port = reactor.listenTCP(number, server, interface="127.0.0.1")
        appeared = reactor.seconds()
        yield client.whenConnected()
        took = reactor.seconds() - appeared
        assert took <= MAX_DELAY + SLACK, took
        FIGURES["refused"] = {"attempts in 1 s": attempts, "connected after": round(took, 3)}
        print(f"\nrefused: {FIGURES['refused']}")
    finally:
        client.stopTrying()
        yield deferLater(reactor, 0.05, lambda: None)
        if port is not None:
            yield port.stopListening()
        yield server.shutdown(timeout=0.5)
        yield deferLater(reactor, 0.05, lambda: None)
