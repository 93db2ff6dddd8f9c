"""
A fault-injecting TCP proxy on 127.0.0.1, controllable at run time, for
real-socket tests of anything built on this library (or not).

Faults, each per direction where that makes sense: pass through; blackhole
(bytes vanish, nothing is closed, as when a NAT forgets the flow); added
latency; a bandwidth limit; reset both sides (RST); half-close (FIN one
way); cut the connection after N bytes; and a NAT mode, where each flow
idle for a given time is forgotten for good, as a NAT table entry
expiring.  The proxy holds at most about C{HIGH_WATER} bytes per
direction: when a receiver is slow it stops reading from the sender, so
backpressure reaches the sender as it would on a real path.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

#: Queued bytes per direction above which the proxy stops reading the sender.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


@dataclass
class Direction:
    """
    What happens to the bytes going one way.

    @ivar forward: False to blackhole them.
    @ivar latency: seconds added to every chunk.
    @ivar bandwidth: bytes per second, or L{None} for no limit.
    @ivar cutAfter: reset both sides once this many more bytes have passed
        (counted from when it was set), or L{None}.
    """

    forward: bool = True
    latency: float = 0.0
    bandwidth: float | None = None
    cutAfter: int | None = None
    passed: int = 0  # bytes forwarded
    dropped: int = 0  # bytes blackholed


@implementer(IPushProducer)
class _Valve:
    """
    Pauses reading from a sender while either of two things is full: the
    proxy's own queue for that direction, or the receiver's socket buffer.
    """

    def __init__(self, source: _Leg) -> None:
        self.source = source
        self.queueFull = False
        self.bufferFull = False
        self.paused = False

    def update(self) -> None:
        pause = self.queueFull or self.bufferFull
        transport = self.source.transport
        if pause != self.paused and transport is not None:
            self.paused = pause
            if pause:
                transport.pauseProducing()  # type: ignore[attr-defined]
            else:
                transport.resumeProducing()  # type: ignore[attr-defined]

    # IPushProducer, registered on the receiver's transport.
    def pauseProducing(self) -> None:
        self.bufferFull = True
        self.update()

    def resumeProducing(self) -> None:
        self.bufferFull = False
        self.update()

    def stopProducing(self) -> None:
        pass


class _Flow:
    """
    One proxied connection as a NAT sees it: forgotten once idle (nothing
    either way) for the proxy's C{natTimeout}; from then on its bytes
    vanish both ways, with no FIN and no RST.  One lazy timer per flow,
    rescheduled for the remainder when traffic came meanwhile.
    """

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.lastActive = proxy.reactor.seconds()
        self.forgotten = False
        self.timer: IDelayedCall | None = None

    def touch(self, now: float) -> None:
        self.lastActive = now
        if self.timer is None and self.proxy.natTimeout is not None:
            self.timer = self.proxy.reactor.callLater(self.proxy.natTimeout, self._check)

    def _check(self) -> None:
        self.timer = None
        timeout = self.proxy.natTimeout
        if timeout is None or self.forgotten:
            return
        idle = self.proxy.reactor.seconds() - self.lastActive
        if idle >= timeout:
            self.forgotten = True
            self.proxy.natForgotten += 1
            return
        self.timer = self.proxy.reactor.callLater(timeout - idle, self._check)

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _Leg(Protocol):
    """
    One side of a proxied connection: bytes it receives go to its twin,
    through the proxy's rules for that direction.
    """

    def __init__(self, proxy: FaultProxy, inbound: bool) -> None:
        self.proxy = proxy
        self.inbound = inbound  # True: the leg facing the client
        self.twin: _Leg | None = None
        self.queue: deque[tuple[float, bytes]] = deque()  # bytes waiting to be written here
        self.queued = 0
        self.lastAt = 0.0
        self.timer: IDelayedCall | None = None
        self.valve: _Valve | None = None  # pauses the twin when we are full
        self.lost: Deferred[None] = Deferred()
        self.connected = False
        self.flow: _Flow | None = None  # shared with the twin

    @property
    def direction(self) -> Direction:
        """
        The rules for bytes this leg receives.
        """
        return self.proxy.up if self.inbound else self.proxy.down

    def connectionMade(self) -> None:
        self.connected = True
        self.proxy._legs.add(self)
        twin = self.twin
        if twin is not None and twin.connected:
            # Both sides are up: wire backpressure both ways, flush early bytes.
            for leg in (self, twin):
                assert leg.twin is not None
                leg.valve = _Valve(leg.twin)
                leg.transport.registerProducer(leg.valve, True)  # type: ignore[union-attr]
                leg._deliver()

    def dataReceived(self, data: bytes) -> None:
        rules = self.direction
        flow = self.flow
        if not rules.forward or (flow is not None and flow.forgotten):
            rules.dropped += len(data)
            return
        if flow is not None:
            flow.touch(self.proxy.reactor.seconds())
        rules.passed += len(data)
        if rules.cutAfter is not None:
            rules.cutAfter -= len(data)
            if rules.cutAfter <= 0:
                rules.cutAfter = None
                self.proxy._resetPair(self)
                return
        twin = self.twin
        if twin is None:
            return
        now = self.proxy.reactor.seconds()
        at = now + rules.latency
        if rules.bandwidth:
            at = max(at, twin.lastAt) + len(data) / rules.bandwidth
        twin.lastAt = at
        twin.queue.append((at, data))
        twin.queued += len(data)
        twin._deliver()

    def _deliver(self) -> None:
        """
        Write what is due; sleep until the next chunk is.
        """
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if not self.connected or self.transport is None:
            return
        now = self.proxy.reactor.seconds()
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            self.queued -= len(data)
            out.append(data)
        if out:
            self.transport.write(b"".join(out))
        if self.queue:
            self.timer = self.proxy.reactor.callLater(self.queue[0][0] - now, self._deliver)
        if self.valve is not None:
            if self.queued > HIGH_WATER:
                self.valve.queueFull = True
            elif self.queued < LOW_WATER:
                self.valve.queueFull = False
            self.valve.update()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if self.flow is not None:
            self.flow.stop()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.queue.clear()
        self.proxy._legs.discard(self)
        twin = self.twin
        if twin is not None and twin.connected and self.proxy.propagateClose:
            twin.transport.loseConnection()  # type: ignore[union-attr]
        self.lost.callback(None)


class _Connect(ClientFactory):
    """
    Connects the server-facing leg; if the target refuses, closes the client.
    """

    def __init__(self, outbound: _Leg) -> None:
        self.outbound = outbound

    def buildProtocol(self, addr: Any) -> _Leg:
        return self.outbound

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        inbound = self.outbound.twin
        if inbound is not None and inbound.transport is not None:
            inbound.transport.loseConnection()


class FaultProxy:
    """
    A TCP proxy on 127.0.0.1 in front of C{target}.

    @ivar up: rules for client-to-server bytes (a L{Direction}).
    @ivar down: rules for server-to-client bytes.
    @ivar propagateClose: when one side closes, close the other (as a real
        path would); turn off to leave a half-open connection behind.
    """

    def __init__(self, targetHost: str, targetPort: int, reactor: Any = None) -> None:
        from twisted.internet import reactor as globalReactor

        self.reactor = reactor if reactor is not None else globalReactor
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.up = Direction()
        self.down = Direction()
        self.propagateClose = True
        self.accepted = 0
        #: NAT mode: seconds of idleness after which a flow is forgotten.
        self.natTimeout: float | None = None
        #: Flows the NAT mode forgot.
        self.natForgotten = 0
        self._legs: set[_Leg] = set()
        self._port: Any = None

    # Faults

    @property
    def clientToServer(self) -> bool:
        return self.up.forward

    @clientToServer.setter
    def clientToServer(self, value: bool) -> None:
        self.up.forward = value

    @property
    def serverToClient(self) -> bool:
        return self.down.forward

    @serverToClient.setter
    def serverToClient(self, value: bool) -> None:
        self.down.forward = value

    def _directions(self, clientToServer: bool, serverToClient: bool) -> list[Direction]:
        return [d for d, on in ((self.up, clientToServer), (self.down, serverToClient)) if on]

    def blackhole(self, clientToServer: bool = True, serverToClient: bool = True) -> None:
        """
        Bytes in the chosen directions vanish; nothing is closed.
        """
        for d in self._directions(clientToServer, serverToClient):
            d.forward = False

    def restore(self) -> None:
        """
        Back to a clean path (forwarding, no latency, no limit, no cut).
        """
        for d in (self.up, self.down):
            d.forward, d.latency, d.bandwidth, d.cutAfter = True, 0.0, None, None

    def delay(
        self, seconds: float, clientToServer: bool = True, serverToClient: bool = True
    ) -> None:
        """
        Add C{seconds} of latency to every chunk (each way chosen).
        """
        for d in self._directions(clientToServer, serverToClient):
            d.latency = seconds

    def throttle(
        self, bytesPerSecond: float, clientToServer: bool = True, serverToClient: bool = True
    ) -> None:
        for d in self._directions(clientToServer, serverToClient):
            d.bandwidth = bytesPerSecond

    def cutAfter(
        self, nbytes: int, clientToServer: bool = True, serverToClient: bool = False
    ) -> None:
        """
        Reset both sides once C{nbytes} more have passed in a chosen direction.
        """
        for d in self._directions(clientToServer, serverToClient):
            d.cutAfter = nbytes

    def nat(self, idleTimeout: float | None) -> None:
        """
        Behave as a NAT (or a load balancer) whose table entries expire: a
        flow idle (nothing either way) for C{idleTimeout} seconds is
        forgotten, and its bytes vanish both ways from then on, with no FIN
        and no RST.  L{None} turns it off (flows already forgotten stay so).
        """
        self.natTimeout = idleTimeout
        now = self.reactor.seconds()
        for leg in self._legs:
            if leg.flow is not None and not leg.flow.forgotten:
                leg.flow.stop()
                leg.flow.touch(now)

    def reset(self) -> None:
        """
        Abort every proxied connection: both peers see a reset (RST).
        """
        for leg in list(self._legs):
            if leg.transport is not None:
                leg.transport.abortConnection()  # type: ignore[attr-defined]

    def halfClose(self, toClient: bool = True) -> None:
        """
        Send FIN to the client (or to the server) and keep the other
        direction open.
        """
        for leg in list(self._legs):
            if leg.inbound == toClient and leg.transport is not None:
                leg.transport.loseWriteConnection()  # type: ignore[attr-defined]

    def _resetPair(self, leg: _Leg) -> None:
        for side in (leg, leg.twin):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()  # type: ignore[attr-defined]

    @property
    def buffered(self) -> int:
        """
        Bytes the proxy holds in its queues right now (bounded by backpressure).
        """
        return sum(leg.queued for leg in self._legs)

    # Life cycle

    def listen(self) -> int:
        """
        Start listening on an ephemeral loopback port; return the port number.
        """
        proxy = self

        class _Accept(ServerFactory):
            def buildProtocol(self, addr: Any) -> Protocol:
                proxy.accepted += 1
                inbound, outbound = _Leg(proxy, inbound=True), _Leg(proxy, inbound=False)
                inbound.twin, outbound.twin = outbound, inbound
                inbound.flow = outbound.flow = flow = _Flow(proxy)
                flow.touch(flow.lastActive)
                proxy.reactor.connectTCP(proxy.targetHost, proxy.targetPort, _Connect(outbound))
                return inbound

        self._port = self.reactor.listenTCP(0, _Accept(), interface="127.0.0.1")
        return int(self._port.getHost().port)

    def stop(self) -> Deferred[None]:
        """
        Stop listening and abort every proxied connection.
        """
        waits = [leg.lost for leg in self._legs]
        self.reset()
        stopped = self._port.stopListening() if self._port is not None else None
        return DeferredList([*waits, *([stopped] if stopped else [])]).addCallback(lambda _: None)
