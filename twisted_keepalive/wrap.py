"""
Heartbeats for a protocol you already have (a C{LineReceiver}, a Redis
client, AMP): wrapped, not subclassed, in the manner of
L{twisted.protocols.policies}.

Beside a request/response protocol the heartbeat's own replies must never
reach the application.  Two ways:

 - C{ping}: the application's own request, such as a Redis client's
   C{ping()}, called when the link is idle; its reply travels the
   application's own pipeline, so it can never be mistaken for another.
   The round trip is timed from the Deferred it returns.
 - C{pingBytes} and C{reply}: bytes written when the link is idle, and the
   exact reply they get.  The reply is taken out of the input only while a
   ping is outstanding and only at the start of the input (a
   request/response protocol answers in order), and no ping is written
   while C{busy(protocol)} says the application has a request outstanding,
   so the ping's reply always comes first.

Either way any inbound byte proves the peer alive, and after C{timeout}
of silence the connection is aborted (a frozen server's replies never
come).  L{KeepaliveEndpoint} wraps an endpoint, for code that connects
through one (C{ClientService}, txredisapi's C{RedisFactory}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .heartbeat import describePeer, maybeGlobalReactor
from .liveness import Liveness, Verdict
from .raw import abortSilent
from .rtt import RTTEstimator
from .timer import IdleTimer

AppPing = Callable[[Any], Any]  # protocol -> Deferred (or a value)
Busy = Callable[[Any], bool]


class KeepaliveWrapper(ProtocolWrapper):
    """
    The transport of the wrapped protocol, and a heartbeat.  Its writes
    count as activity, so pings go out only when the link is idle.

    @ivar rtt: round trips of the heartbeat's pings.
    @ivar closeReason: after the connection is gone, a L{HeartbeatTimeout}
        if the heartbeat ended it, else the transport's reason.
    """

    log = Logger()
    factory: KeepaliveWrappingFactory
    closeReason: Failure | None = None

    def __init__(self, factory: KeepaliveWrappingFactory, wrappedProtocol: Protocol) -> None:
        super().__init__(cast(Any, factory), wrappedProtocol)
        self.rtt = RTTEstimator()
        self.pingsSent = 0
        self.repliesMatched = 0
        self.peer = "unknown peer"
        self._clock = factory.clock
        self._timer: IdleTimer | None = None
        self._sentAt: float | None = None  # a ping is outstanding since
        self._held = b""  # input that may still be the start of the ping's reply
        self._reason: Exception | None = None

    def makeConnection(self, transport: Any) -> None:
        f = self.factory
        self.peer = describePeer(transport)
        self.liveness = Liveness(f.interval, f.timeout, self._clock.seconds())
        super().makeConnection(transport)
        self._timer = IdleTimer(self._clock, self.liveness, self._onTimer)
        self._timer.start()

    # The wrapped protocol's transport: writes are activity.

    def write(self, data: bytes) -> None:
        self.liveness.lastSent = self._clock.seconds()
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.liveness.lastSent = self._clock.seconds()
        super().writeSequence(data)

    # Input

    def dataReceived(self, data: bytes) -> None:
        now = self._clock.seconds()
        self.liveness.lastReceived = now
        reply = self.factory.reply
        if self._sentAt is not None and reply is not None:
            data = self._held + data
            if data.startswith(reply):
                self._answered(now)
                data = data[len(reply) :]
            elif reply.startswith(data):
                self._held = data  # the reply, not all here yet
                return
            else:
                # Something else came first: the application had a request
                # outstanding after all (its busy hook said no).  Its reply
                # is not ours to take; ours comes later and is passed on.
                self._sentAt = None
                self._held = b""
                self.log.warn(
                    "{peer} answered something else before the heartbeat's reply; "
                    "the busy hook must say when a request is outstanding",
                    peer=self.peer,
                )
            self._held = b""
            if not data:
                return
        self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._reason is not None:
            reason = Failure(self._reason)
        self.closeReason = reason
        super().connectionLost(reason)

    # The heartbeat

    def _onTimer(self, now: float) -> bool:
        verdict = self.liveness.check(now)
        if verdict is Verdict.DEAD:
            self._reason = abortSilent(self, self.liveness, now, self.factory.timeout)
            return False
        if verdict is Verdict.PING:
            self.liveness.pingSent(now)  # due again in an interval, sent or not
            f = self.factory
            if self._sentAt is not None:
                return True  # one ping at a time; silence decides
            if f.busy is not None and f.busy(self.wrappedProtocol):
                return True  # its replies will prove life; ours would interleave
            self._sentAt = now
            self.pingsSent += 1
            if f.ping is not None:
                d: Deferred[Any] = maybeDeferred(f.ping, self.wrappedProtocol)
                d.addCallbacks(self._appPong, self._appPingFailed)
            else:
                assert f.pingBytes is not None
                self.transport.write(f.pingBytes)  # type: ignore[union-attr]
                if f.reply is None:
                    self._sentAt = None  # one-way: nothing to wait for
        return True

    def _answered(self, now: float) -> None:
        assert self._sentAt is not None
        rtt = max(0.0, now - self._sentAt)
        self._sentAt = None
        self.rtt.add(rtt)
        self.repliesMatched += 1
        if self.factory.onPong is not None:
            self.factory.onPong(rtt)

    def _appPong(self, result: object) -> None:
        if self._sentAt is not None:
            self._answered(self._clock.seconds())

    def _appPingFailed(self, failure: Failure) -> None:
        self._sentAt = None
        if self._reason is None and self.closeReason is None:  # not lost with the connection
            self.log.warn(
                "The heartbeat's ping to {peer} failed: {error}",
                peer=self.peer,
                error=failure.getErrorMessage(),
            )


class KeepaliveWrappingFactory(WrappingFactory):
    """
    Wrap C{wrappedFactory}'s protocols with a heartbeat.  Give C{ping} (a
    callable C{protocol -> Deferred}) or C{pingBytes} (with C{reply} to
    time it and take it out of the input, and C{busy} to say when the
    application has a request outstanding).  It is a C{ClientFactory}: use
    it with C{connectTCP} or an endpoint, and the wrapped factory still
    sees C{clientConnectionLost} and the rest.

    @ivar interval: seconds without writing or reading before a ping.
    @ivar timeout: seconds of inbound silence before the peer is declared
        dead and the connection aborted.
    """

    protocol = KeepaliveWrapper

    def __init__(
        self,
        wrappedFactory: Factory,
        *,
        interval: float = 10.0,
        timeout: float = 30.0,
        ping: AppPing | None = None,
        pingBytes: bytes | None = None,
        reply: bytes | None = None,
        busy: Busy | None = None,
        onPong: Callable[[float], None] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if (ping is None) == (pingBytes is None):
            raise ValueError("give ping (a callable) or pingBytes, not both or neither")
        if reply is not None and pingBytes is None:
            raise ValueError("reply goes with pingBytes")
        if pingBytes is not None and not pingBytes:
            raise ValueError("pingBytes must not be empty")
        if reply is not None and not reply:
            raise ValueError("reply must not be empty")
        if not 0 < interval < timeout:
            raise ValueError(
                f"need 0 < interval < timeout, not interval={interval!r}, timeout={timeout!r}"
            )
        super().__init__(wrappedFactory)
        self.interval = interval
        self.timeout = timeout
        self.ping = ping
        self.pingBytes = pingBytes
        self.reply = reply
        self.busy = busy
        self.onPong = onPong
        self.clock = maybeGlobalReactor(clock)


@implementer(IStreamClientEndpoint)
class KeepaliveEndpoint:
    """
    An endpoint whose connections carry a heartbeat: C{connect(factory)}
    connects C{endpoint} with C{factory}'s protocols wrapped by a
    L{KeepaliveWrappingFactory} made with C{settings}, and fires with the
    application's protocol, as the endpoint itself would.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, **settings: Any) -> None:
        self.endpoint = endpoint
        self.settings = settings

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        wrapping = KeepaliveWrappingFactory(cast(Factory, protocolFactory), **self.settings)

        def unwrap(wrapper: IProtocol) -> IProtocol:
            return cast(KeepaliveWrapper, wrapper).wrappedProtocol

        return self.endpoint.connect(wrapping).addCallback(unwrap)
