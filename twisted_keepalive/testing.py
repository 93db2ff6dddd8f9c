"""
Test helpers for code built on this library: a client and a server protocol
joined in memory and driven by a L{Clock}, for fast deterministic tests; and
a fault-injecting TCP proxy on loopback for real-socket tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
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


__all__ = ["Direction", "FaultProxy", "MemoryPair"]
