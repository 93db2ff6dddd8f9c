"""
Test helpers for code built on this library: a client and a server protocol
joined in memory and driven by a L{Clock}, for fast deterministic tests; and
a fault-injecting TCP proxy on loopback for real-socket tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


class MemoryPair:
    """
    Two protocols whose transports are joined in memory.

    Nothing moves until L{pump} (or L{advance}) is called, so a test decides
    exactly when bytes cross.  Either direction can be blackholed, as when a
    NAT forgets the flow: written bytes then vanish without an error.

    @ivar clientToServer: forward bytes the client writes (else drop them).
    @ivar serverToClient: forward bytes the server writes (else drop them).
    """

    def __init__(self, client: Protocol, server: Protocol, clock: Clock | None = None) -> None:
        self.client = client
        self.server = server
        self.clock = clock if clock is not None else Clock()
        clientAddr = IPv4Address("TCP", "127.0.0.1", 50000)
        serverAddr = IPv4Address("TCP", "127.0.0.1", 9000)
        self.clientTransport = StringTransport(hostAddress=clientAddr, peerAddress=serverAddr)
        self.serverTransport = StringTransport(hostAddress=serverAddr, peerAddress=clientAddr)
        self.clientToServer = True
        self.serverToClient = True
        self.closed = False

    def connect(self) -> MemoryPair:
        """
        Call both sides' C{connectionMade} (server first) and pump.
        """
        self.server.makeConnection(self.serverTransport)
        self.client.makeConnection(self.clientTransport)
        self.pump()
        return self

    def pump(self) -> None:
        """
        Move bytes both ways until neither side has anything to say, then
        deliver C{connectionLost} if either side closed.
        """
        while not self.closed:
            fromClient = self.clientTransport.value()
            fromServer = self.serverTransport.value()
            self.clientTransport.clear()
            self.serverTransport.clear()
            if fromClient and self.clientToServer:
                self.server.dataReceived(fromClient)
            if fromServer and self.serverToClient:
                self.client.dataReceived(fromServer)
            if self._closeIfAsked():
                return
            if not (self.clientTransport.value() or self.serverTransport.value()):
                return

    def advance(self, seconds: float, step: float | None = None) -> None:
        """
        Advance the clock by C{seconds}, pumping after every C{step}
        (default: the whole amount in one go).
        """
        step = seconds if step is None else step
        remaining = seconds
        while remaining > 1e-12:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta
            self.pump()

    def _closeIfAsked(self) -> bool:
        ct, st = self.clientTransport, self.serverTransport
        if not (ct.disconnecting or st.disconnecting):
            return False
        # Whatever the closing side wrote before closing still reaches the
        # peer, unless it aborted (which discards its unsent output).
        if ct.disconnecting and not ct.disconnected and self.clientToServer and ct.value():
            self.server.dataReceived(ct.value())
        if st.disconnecting and not st.disconnected and self.serverToClient and st.value():
            self.client.dataReceived(st.value())
        self.closed = True
        aborted = ct.disconnected or st.disconnected
        reason = Failure(ConnectionAborted() if aborted else ConnectionDone())
        self.client.connectionLost(reason)
        self.server.connectionLost(reason)
        return True


class _ProxySide(Protocol):
    """
    One leg of a proxied connection; forwards to its twin unless blackholed.
    """

    def __init__(self, proxy: FaultProxy, inbound: bool) -> None:
        self.proxy = proxy
        self.inbound = inbound  # True: the leg facing the client
        self.twin: _ProxySide | None = None
        self.pending: list[bytes] = []
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.proxy._legs.add(self)
        if self.twin is not None and self.pending:
            self.transport.write(b"".join(self.pending))  # type: ignore[union-attr]
            self.pending.clear()

    def dataReceived(self, data: bytes) -> None:
        forward = self.proxy.clientToServer if self.inbound else self.proxy.serverToClient
        if not forward:
            return
        twin = self.twin
        if twin is None or twin.transport is None:
            if twin is not None:
                twin.pending.append(data)
            return
        twin.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.proxy._legs.discard(self)
        twin = self.twin
        if twin is not None and twin.transport is not None and self.proxy.propagateClose:
            twin.transport.loseConnection()
        self.lost.callback(None)


class FaultProxy:
    """
    A TCP proxy on 127.0.0.1 in front of C{target}, for real-socket tests.

    Flip L{clientToServer} or L{serverToClient} off to blackhole a
    direction: bytes vanish, nothing is closed, as when a NAT or a firewall
    silently forgets the flow.

    @ivar propagateClose: when one leg closes, close the other.
    """

    def __init__(self, targetHost: str, targetPort: int, reactor: Any = None) -> None:
        from twisted.internet import reactor as globalReactor

        self.reactor = reactor if reactor is not None else globalReactor
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.clientToServer = True
        self.serverToClient = True
        self.propagateClose = True
        self._legs: set[_ProxySide] = set()
        self._port: Any = None

    def blackhole(self, clientToServer: bool = True, serverToClient: bool = True) -> None:
        if clientToServer:
            self.clientToServer = False
        if serverToClient:
            self.serverToClient = False

    def restore(self) -> None:
        self.clientToServer = self.serverToClient = True

    def listen(self) -> int:
        """
        Start listening on an ephemeral loopback port; return the port number.
        """
        proxy = self

        class _Accept(ServerFactory):
            def buildProtocol(self, addr: Any) -> Protocol:
                inbound = _ProxySide(proxy, inbound=True)
                outbound = _ProxySide(proxy, inbound=False)
                inbound.twin, outbound.twin = outbound, inbound
                factory = ClientFactory()
                factory.buildProtocol = lambda addr: outbound  # type: ignore[method-assign]
                factory.clientConnectionFailed = (  # type: ignore[method-assign]
                    lambda connector, reason: inbound.transport.loseConnection()  # type: ignore[union-attr]
                )
                proxy.reactor.connectTCP(proxy.targetHost, proxy.targetPort, factory)
                return inbound

        self._port = self.reactor.listenTCP(0, _Accept(), interface="127.0.0.1")
        return int(self._port.getHost().port)

    def stop(self) -> Deferred[None]:
        """
        Stop listening and abort every proxied connection.
        """
        waits = [leg.lost for leg in self._legs]
        for leg in list(self._legs):
            if leg.transport is not None:
                leg.transport.abortConnection()  # type: ignore[attr-defined]
        stopped = self._port.stopListening() if self._port is not None else None
        return DeferredList([*waits, *([stopped] if stopped else [])]).addCallback(lambda _: None)
