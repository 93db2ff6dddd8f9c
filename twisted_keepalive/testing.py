"""
Test helpers for code built on this library: a client and a server protocol
joined in memory and driven by a L{Clock}, for fast deterministic tests; and
a fault-injecting TCP proxy on loopback for real-socket tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from .faultproxy import Direction, FaultProxy


class MemoryPair:
    """
    Two protocols whose transports are joined in memory.

    Nothing moves until L{pump} (or L{advance}) is called, so a test decides
    exactly when bytes cross.  Either direction can be blackholed, as when a
    NAT forgets the flow: written bytes then vanish without an error.

    @ivar clientToServer: forward bytes the client writes (else drop them).
    @ivar serverToClient: forward bytes the server writes (else drop them).
    @ivar natTimeout: behave as a NAT whose entry expires: once nothing has
        crossed either way for this many seconds, the flow is forgotten and
        every byte vanishes from then on (L{None}: never).
    @ivar natForgotten: the NAT forgot this flow.
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
        self.natTimeout: float | None = None
        self.natForgotten = False
        self._lastActive = self.clock.seconds()

    @classmethod
    def fromFactories(
        cls, clientFactory: Any, serverFactory: Any, clock: Clock | None = None
    ) -> MemoryPair:
        """
        A connected pair whose protocols come from the factories'
        C{buildProtocol}, as a real connection's do: a
        L{KeepaliveServerFactory} registers the connection (its registry,
        limits, sessions), a client factory tracks it.  Both factories
        should share C{clock}.
        """
        client = clientFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9000))
        server = serverFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        return cls(client, server, clock).connect()

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
            if (fromClient or fromServer) and self._natDrops():
                fromClient = fromServer = b""
            if fromClient and self.clientToServer:
                self.server.dataReceived(fromClient)
            if fromServer and self.serverToClient:
                self.client.dataReceived(fromServer)
            if self._closeIfAsked():
                return
            if not (self.clientTransport.value() or self.serverTransport.value()):
                return

    def _natDrops(self) -> bool:
        """Bytes are about to cross: the NAT forgot the flow, or it is active now."""
        now = self.clock.seconds()
        if self.natTimeout is not None and now - self._lastActive >= self.natTimeout:
            self.natForgotten = True
        if not self.natForgotten:
            self._lastActive = now
        return self.natForgotten

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


class FakeNetwork:
    """
    The network as a client factory sees it, on a
    L{twisted.internet.testing.MemoryReactorClock}: every connection
    attempt it makes (C{connectTCP}, or an endpoint over it) waits for the
    test's answer, in order: L{accept} joins it in memory to a protocol of
    a server factory, L{refuse} fails it, L{ignore} leaves it to the
    connect timeout.  With L{advance}, backoff, failover and retry-after
    hints are tested exactly, without a socket.

    @ivar pairs: the L{MemoryPair} of every accepted connection.
    @ivar natTimeout: given to every accepted pair (L{MemoryPair.natTimeout}).
    """

    def __init__(self, reactor: Any, natTimeout: float | None = None) -> None:
        self.reactor = reactor
        self.pairs: list[MemoryPair] = []
        self.natTimeout = natTimeout
        self._answered = 0

    @property
    def pending(self) -> list[str]:
        """C{host:port} of each attempt waiting for an answer, oldest first."""
        return [f"{c[0]}:{c[1]}" for c in self.reactor.tcpClients[self._answered :]]

    def _next(self) -> tuple[str, int, Any, Any]:
        clients = self.reactor.tcpClients
        while self._answered < len(clients):
            index = self._answered
            self._answered += 1
            connector = self.reactor.connectors[index]
            if not connector.stoppedConnecting:  # not cancelled by a timeout
                host, port, factory = clients[index][:3]
                return host, port, factory, connector
        raise AssertionError("no connection attempt is waiting")

    def accept(self, serverFactory: Any) -> MemoryPair:
        """
        The oldest waiting attempt connects to a protocol of
        C{serverFactory} (its C{buildProtocol}, so it registers it).
        """
        host, port, factory, _ = self._next()
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        server = serverFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        pair = MemoryPair(client, server, self.reactor)
        pair.natTimeout = self.natTimeout
        pair.connect()
        self.pairs.append(pair)
        return pair

    def refuse(self) -> None:
        """The oldest waiting attempt is refused (connection refused)."""
        _, _, factory, connector = self._next()
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def ignore(self) -> None:
        """The oldest waiting attempt gets no answer: the connect timeout decides."""
        self._next()

    def advance(self, seconds: float, step: float = 0.125) -> None:
        """Let time pass in small steps, carrying bytes on every connection."""
        while seconds > 1e-12:
            delta = min(step, seconds)
            self.reactor.advance(delta)
            seconds -= delta
            for pair in self.pairs:
                pair.pump()


__all__ = ["Direction", "FakeNetwork", "FaultProxy", "MemoryPair"]
