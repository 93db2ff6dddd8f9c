"""
L{HeartbeatProtocol}: the Twisted shell around L{KeepaliveConnection}.

Applications subclass it, override L{HeartbeatProtocol.messageReceived} and
call L{HeartbeatProtocol.sendMessage}.  The protocol pings when the link is
idle, answers the peer's pings, measures RTT, and aborts the connection when
the peer stays silent past its timeout.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .adaptive import AdaptiveInterval
from .budget import MESSAGE_COST, MemoryBudget
from .config import HeartbeatConfig
from .connection import (
    _PING_HEADER,
    SESSION_OVERHEAD,
    CloseReceived,
    HandshakeCompleted,
    KeepaliveConnection,
    MessageRefused,
    PingReceived,
    PongReceived,
    ProtocolFailed,
    Role,
    SessionLost,
    SessionStarted,
    State,
    _packHeader,
)
from .errors import (
    CloseCode,
    ClosedLocally,
    HandshakeTimeout,
    HeartbeatTimeout,
    LocalProtocolError,
    PeerClosed,
    ProtocolViolation,
    Refused,
    RemoteProtocolError,
)
from .frames import FrameDecoder
from .liveness import Verdict
from .logflood import PeerLogLimiter
from .rtt import RTTEstimator
from .session import Session
from .sweep import IdleSweeper
from .tcp import KERNEL_TICK, applyTCPKeepalive, findSocket, lastDataSent
from .timer import IdleTimer

_CLOSED = State.CLOSED
_OPEN = State.OPEN
#: A session's DATA header, with its sequence number (and an ACK).
_SEQ_HEADER = struct.Struct(">IBBQ")
_SEQ_ACK_HEADER = struct.Struct(">IBBQQ")


#: Sockets Nagle applies to (a UNIX socket has no TCP_NODELAY).
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def maybeGlobalReactor(clock: IReactorTime | None) -> IReactorTime:
    """
    C{clock}, or the global reactor if it is L{None}.
    """
    if clock is None:
        from twisted.internet import reactor

        return reactor
    return clock


def plainTCP(transport: Any) -> Any:
    """
    C{transport} if it is Twisted's own TCP connection with the buffer
    attributes L{HeartbeatProtocol._flush} reads, else L{None}.
    """
    if isinstance(transport, tcp.Connection) and all(
        hasattr(transport, name)
        for name in ("_tempDataLen", "dataBuffer", "offset", "_writeDisconnected", "TLS", "socket")
    ):
        return transport
    return None


def describePeer(transport: Any) -> str:
    """
    C{host:port} of the peer, for log lines; never raises.
    """
    try:
        peer = transport.getPeer()
        host, port = peer.host, peer.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    except Exception:
        return "unknown peer"


_warnedForgotSuper: set[tuple[type, str]] = set()


def _forgotSuper(cls: type, method: str) -> None:
    if (cls, method) in _warnedForgotSuper:
        return
    _warnedForgotSuper.add((cls, method))
    HeartbeatProtocol.log.error(
        "{cls}.{method} does not call HeartbeatProtocol.{method}; called it for you "
        "(heartbeats and reconnection need it): add super().{method}(...)",
        cls=f"{cls.__module__}.{cls.__qualname__}",
        method=method,
    )


def fireReceipts(session: Session) -> None:
    """
    Fire the receipts the session settled (acknowledged, or never to be).
    """
    for receipt, seq, failure in session.takeSettled():
        if failure is None:
            receipt.callback(seq)
        else:
            receipt.errback(Failure(failure))


@dataclass(frozen=True)
class HeartbeatStats:
    """
    A snapshot of one connection's health.  Times are clock seconds (epoch
    seconds with the real reactor); RTTs are seconds or L{None} before the
    first PONG.
    """

    state: str
    interval: float | None
    timeout: float | None
    srtt: float | None
    rttvar: float | None
    lastRtt: float | None
    minRtt: float | None
    connectedAt: float
    handshakeAt: float | None
    lastReceived: float
    lastSent: float
    pingsSent: int
    pongsReceived: int
    pingsReceived: int
    framesIn: int
    framesOut: int
    bytesIn: int
    bytesOut: int
    messagesIn: int
    messagesOut: int


@implementer(IPushProducer)
class HeartbeatProtocol(Protocol):
    """
    A connection that proves its peer is alive.

    Settings come from, in order: the constructor, the factory's
    C{heartbeatConfig} and C{clock} attributes, the defaults.  The role is
    the constructor's C{role}, else L{Role.CLIENT} under a
    L{ClientFactory} and L{Role.SERVER} under any other factory.

    Override L{handshakeCompleted}, L{messageReceived}, L{pongReceived}
    and L{connectionClosed}.  A factory with C{heartbeatConnectionMade(p)},
    C{heartbeatConnectionReady(p)}, C{heartbeatPingReceived(p, at, gap)} or
    C{heartbeatConnectionLost(p, reason)} methods is told of those events
    (the last with the translated reason), whether it connected through a
    connector or an endpoint.  If you override C{connectionMade},
    C{dataReceived} or C{connectionLost}, call this class's version.

    The protocol registers itself as its transport's producer, so it knows
    when the peer stops reading (L{outputPaused}); what is written while
    paused is counted, and past C{maxPendingOutput} the connection is
    dropped with SLOW_CONSUMER instead of letting memory grow.  An
    application that wants backpressure registers its producer with the
    protocol (L{registerProducer}), not with the transport.

    @ivar closeReason: after the connection is gone, why: a
        L{HeartbeatTimeout}, L{HandshakeTimeout}, L{PeerClosed},
        L{ClosedLocally} or L{ProtocolViolation} when this library ended it
        or was told why, else the transport's own reason.
    """

    # Slots keep an idle connection small: the instance dict then holds only
    # what Twisted and subclasses add (bench/idle_fleet.py measures memory).
    __slots__ = (
        "_ackCall",
        "_adaptive",
        "_baseTimeout",
        "_budget",
        "_charged",
        "_clock",
        "_closeCall",
        "_config",
        "_drainFast",
        "_elastic",
        "_fast",
        "_handshakeCall",
        "_kernelClock",
        "_logLimiter",
        "_lost",
        "_maxPending",
        "_now",
        "_pausedLimit",
        "_pendingWhilePaused",
        "_pingHook",
        "_plainTCP",
        "_producer",
        "_producerPaused",
        "_readingPaused",
        "_readyWaiters",
        "_reason",
        "_resumedFast",
        "_role",
        "_savedTimeout",
        "_socket",
        "_sweeper",
        "_timer",
        "_wroteSinceCheck",
        "outputPaused",
        "peer",
    )

    log = Logger()
    closeReason: Failure | None = None
    core: KeepaliveConnection | None = None

    def __init__(
        self,
        config: HeartbeatConfig | None = None,
        *,
        role: Role | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._config = config
        self._role = role
        self._clock = clock
        self._timer: IdleTimer | None = None
        self._plainTCP: Any = None
        self._pingHook = False
        self._sweeper: IdleSweeper | None = None
        self._handshakeCall: IDelayedCall | None = None
        self._closeCall: IDelayedCall | None = None
        self._ackCall: IDelayedCall | None = None
        self._reason: Exception | None = None
        self.peer = "unknown peer"
        self._logLimiter: PeerLogLimiter | None = None
        self._budget: MemoryBudget | None = None
        self._charged = 0
        self.outputPaused = False
        self._pendingWhilePaused = 0
        self._producer: IPushProducer | None = None
        self._producerPaused = False
        self._elastic = False
        self._readingPaused = False
        self._savedTimeout: float | None = None
        self._lost = False
        self._readyWaiters: list[Deferred[HeartbeatProtocol]] | None = None
        self._adaptive: AdaptiveInterval | None = None
        self._baseTimeout = 0.0
        # The fast send path's counters, folded into the engine's on demand.
        self._drainFast: Callable[[], int] | None = None
        self._fast = 0  # the fast send path: 0 not yet, 1 in place, -1 never
        self._resumedFast: Callable[[], None] | None = None
        self._wroteSinceCheck = False
        self._kernelClock = False
        self._socket: socket.socket | None = None

    # Settings

    @property
    def config(self) -> HeartbeatConfig:
        if self._config is None:
            self._config = getattr(self.factory, "heartbeatConfig", None) or HeartbeatConfig()
        return self._config

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            self._clock = maybeGlobalReactor(getattr(self.factory, "clock", None))
        return self._clock

    @property
    def role(self) -> Role:
        if self._role is None:
            if self.factory is None:
                raise LocalProtocolError("HeartbeatProtocol needs a role or a factory")
            self._role = Role.CLIENT if isinstance(self.factory, ClientFactory) else Role.SERVER
        return self._role

    # Twisted's protocol interface

    def makeConnection(self, transport: Any) -> None:
        """
        Twisted's entry point, kept robust to a habit: a subclass that
        overrides C{connectionMade} or C{connectionLost} and forgets to call
        this class's version would leave the heartbeat off or its factory
        waiting for a loss it never hears of (no reconnection).  Both are
        caught here: the missing call is made, and logged once as the bug
        it is.
        """
        cls = type(self)
        if cls.connectionLost is not HeartbeatProtocol.connectionLost:
            overridden = self.connectionLost

            def connectionLost(reason: Failure = connectionDone) -> None:
                try:
                    overridden(reason)
                finally:
                    if not self._lost:
                        _forgotSuper(cls, "connectionLost")
                        HeartbeatProtocol.connectionLost(self, reason)

            self.connectionLost = connectionLost  # type: ignore[method-assign]
        super().makeConnection(transport)  # type: ignore[no-untyped-call]
        if self.core is None and self.transport is not None:
            _forgotSuper(cls, "connectionMade")
            HeartbeatProtocol.connectionMade(self)

    def whenReady(self) -> Deferred[HeartbeatProtocol]:
        """
        A Deferred that fires with this protocol once its handshake is
        complete (at once if it is), or fails with the reason the
        connection ended first.  For C{ClientService}'s
        C{prepareConnection}, so that its C{whenConnected} fires only when
        L{sendMessage} can be called.
        """
        if self.isOpen:
            return succeed(self)
        if self._lost:
            return fail(self.closeReason or Failure(LocalProtocolError("connection ended")))
        d: Deferred[HeartbeatProtocol] = Deferred()
        if self._readyWaiters is None:
            self._readyWaiters = []
        self._readyWaiters.append(d)
        return d

    def connectionMade(self) -> None:
        config = self.config
        clock = self.clock
        self.peer = describePeer(self.transport)
        # A server's: limits the log lines peers can cause, and the memory
        # all its clients can hold together.
        self._logLimiter = getattr(self.factory, "peerLog", None)
        self._budget = getattr(self.factory, "memoryBudget", None)
        self._plainTCP = plainTCP(self.transport)
        # Looked up at each PING (a bound method kept per connection would
        # cost 64 bytes of every idle connection).
        self._pingHook = getattr(self.factory, "heartbeatPingReceived", None) is not None
        self._now = clock.seconds  # bound once: called per read and per write
        self._maxPending = config.maxPendingOutput
        # With a budget every paused write is charged: _write's one check
        # then always takes the careful path.
        self._pausedLimit = -1 if self._budget is not None else self._maxPending
        now = clock.seconds()
        self.core = core = KeepaliveConnection(self.role, config, now)
        sock = findSocket(self.transport) if config.tcpNoDelay or config.tcpKeepalive else None
        if config.tcpNoDelay and sock is not None and sock.family in _TCP_FAMILIES:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if config.tcpKeepalive is not None and sock is not None:
            applyTCPKeepalive(sock, config.tcpKeepalive)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._handshakeCall = clock.callLater(config.handshakeTimeout, self._handshakeExpired)
        notify = getattr(self.factory, "heartbeatConnectionMade", None)
        if notify is not None:
            notify(self)  # a server factory may refuse the connection here
        if core.role is Role.CLIENT:
            # A session to offer (KeepaliveClientFactory with resume=True).
            core.session = getattr(self.factory, "resumeSession", None)
            self._adaptive = getattr(self.factory, "adaptive", None)
        else:
            sessionFor = getattr(self.factory, "heartbeatSessionFor", None)
            if sessionFor is not None:
                core.sessionFor = lambda hello: sessionFor(self, hello)
        if core.role is Role.CLIENT and not core.isClosed:
            core.initiate(now)
            self._flush()

    def dataReceived(self, data: bytes) -> None:
        core = self.core
        if core is None or core.state is _CLOSED:
            return
        if (
            len(data) == 18
            and data[:6] == _PING_HEADER
            and core.state is _OPEN
            and not core._decoder._size
        ):
            # What an idle link reads: one PING.  Answered, then the hooks
            # the PingReceived event would reach, called directly.
            now = self._now()
            gap = core.receiveLonePing(data, now)
            self._flush()
            self.pingReceived(now)
            if self._pingHook:
                self.factory.heartbeatPingReceived(self, now, gap)
            return
        events = core.receive(data, self._now())
        if core.hasOutput:
            self._flush()  # PONGs, a server HELLO, or the CLOSE naming a fault
        session = core.session
        if session is not None:
            if session.pendingAcks and self._ackCall is None:
                # One timer per ack period, not per message (ackEvery sends at once).
                self._ackCall = self.clock.callLater(self.config.ackDelay, self._sendAck)
            try:
                self._deliver(core, events)
            finally:
                # After the messages of this read: an acknowledgement rides on
                # the reply it acknowledges, and a receipt's callback must
                # find that reply delivered.
                if session.settled:
                    fireReceipts(session)
                if self._producer is not None:
                    self._updateProducer()  # acknowledgements free room
            return
        self._deliver(core, events)

    def _deliver(self, core: KeepaliveConnection, events: list[Any]) -> None:
        # Input that ended the connection (a CLOSE, a fault) still delivers
        # everything that came before it; only the application closing the
        # connection meanwhile stops the delivery.
        closedByInput = core.state is _CLOSED
        deliver = self.messageReceived
        for event in events:
            if core.state is _CLOSED and not closedByInput:
                break
            try:
                if type(event) is bytes:
                    deliver(event)
                elif type(event) is ProtocolFailed:
                    self._protocolError(event.error)
                    return
                else:
                    self._dispatch(event)
            except Exception:
                # The application's bug, so a traceback; but peers can
                # trigger it at will, so limited like any peer-caused line.
                limiter = self._logLimiter
                if limiter is None or limiter.allow("app-error", self.peerHost) is not None:
                    self.log.failure(
                        "Application error handling input from {peer}; closing", peer=self.peer
                    )
                self.close(CloseCode.INTERNAL_ERROR, "internal error")
                return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lost:
            return
        self._lost = True
        if self._drainFast is not None:
            self._drainFast()
            self.__dict__.pop("sendMessage", None)  # the class's own again: it raises
            self._fast = -1
        self._cancelTimers()
        self._releaseOutput()
        if self.core is not None:
            self.core.state = State.CLOSED
            if self._elastic and self.core.session is not None:
                # Our producer is gone with us; the session may outlive us.
                self.core.session.elastic = False
        if self._reason is not None:
            reason = Failure(self._reason)
        self.closeReason = reason
        self.connectionClosed(reason)
        notify = getattr(self.factory, "heartbeatConnectionLost", None)
        if notify is not None:
            notify(self, reason)
        self._dropBuffers()
        waiters, self._readyWaiters = self._readyWaiters or [], None
        for d in waiters:
            d.errback(reason)

    def _dropBuffers(self) -> None:
        """
        The connection is gone: let go of what it held now.  The protocol
        and its transport refer to each other, so without this their
        buffers (up to C{maxPendingOutput} of unread output, a session the
        server has since forgotten) wait for the cyclic garbage collector,
        which large bytes objects do not wake: measured, 40 dropped
        sessions held 2.5 times the memory budget until the next collection.
        """
        t = self._plainTCP
        if t is not None:
            t.dataBuffer = b""
            t._tempDataBuffer = []
            t._tempDataLen = 0
            t.offset = 0
        core = self.core
        if core is not None:
            core._decoder = FrameDecoder(0)  # the half-frame it held
            if core.role is Role.SERVER:
                core.session = None  # kept by the factory, if at all

    def handshakeCompleted(self) -> None:
        """
        The HELLO exchange is done: L{sendMessage} may be called from now on.
        """

    def messageReceived(self, message: bytes) -> None:
        """
        One application message arrived.
        """

    def pongReceived(self, rtt: float) -> None:
        """
        A PONG arrived; C{rtt} is this round trip in seconds.
        """

    def connectionClosed(self, reason: Failure) -> None:
        """
        The connection is gone; C{reason} is also in L{closeReason}.
        """

    # Application actions

    @property
    def peerHost(self) -> str:
        """The peer's address without its port (what log limits count by)."""
        return self.peer.rpartition(":")[0] or self.peer

    @property
    def isOpen(self) -> bool:
        return self.core is not None and self.core.state is State.OPEN

    @property
    def rtt(self) -> RTTEstimator | None:
        """
        The connection's RTT estimator (as L{RawHeartbeatProtocol.rtt}), or
        L{None} before it connects.
        """
        return self.core.rtt if self.core is not None else None

    def sendMessage(self, message: bytes) -> None:
        """
        Send one application message.

        @raise LocalProtocolError: before the handshake, after close, or when
            the message exceeds the peer's frame limit.
        @raise QueueFull: in a session, the retransmit buffer is full and
            its overflow policy is RAISE (register a producer to be paused
            before that happens).
        """
        fast = self._fast
        if fast == 1:
            # A bound method taken before the fast path was in place (a
            # producer's, a LoopingCall's): hand over to it.
            self.__dict__["sendMessage"](message)
            return
        core = self.core
        if fast == 0 and core is not None and core.state is _OPEN:
            # A server's first message: put the fast path in place (not at
            # the handshake: an idle connection does not pay for it).
            self._installFastSend()
            if self._fast == 1:
                self.__dict__["sendMessage"](message)
                return
        self._sendPlain(message)

    def _sendPlain(self, message: bytes) -> None:
        """L{sendMessage} without the fast path (which falls back to it)."""
        core = self.core
        length = len(message) + 2
        # fastLimit is the peer's frame limit, or -1 in a session (numbered
        # and kept messages take the careful path): one comparison for both.
        if core is None or core.state is not _OPEN or length > core.fastLimit:
            self._sendCarefully(message)  # a session, or raises the precise error
            return
        # The hot path, measured in bench/datapath.py: the engine's
        # encodeMessage inlined (same checks above, same bookkeeping here),
        # saving a call per message.
        core.bytesOut += length + 4
        core.messagesOut += 1
        core.liveness.lastSent = self._now()
        frame = _packHeader(length, 4, 0) + message
        if self.outputPaused:
            self._write(frame)  # counted against maxPendingOutput
        else:
            self.transport.write(frame)  # type: ignore[union-attr]

    def _sendCarefully(self, message: bytes, receipt: Deferred[int | None] | None = None) -> None:
        """
        A message of a session, or the cases that raise: not connected, not
        open, too large, retransmit buffer full.
        """
        core = self.core
        if core is None:
            raise LocalProtocolError("cannot send: not connected")
        frame = core.encodeMessage(message, self._now(), receipt)
        if frame:  # else the session's overflow policy dropped it
            self._write(frame)
        session = core.session
        if session is None:
            if receipt is not None:
                receipt.callback(None)  # written: all a connection without a session knows
            return
        if session.settled:
            fireReceipts(session)
        if session.reachedBound:
            # Sending can only fill the buffer: pause on that edge, with no
            # check per message (acknowledgements resume, in dataReceived).
            session.reachedBound = False
            producer = self._producer
            if producer is not None and not self._producerPaused and session.isFull:
                self._producerPaused = True
                producer.pauseProducing()

    def sendConfirmed(self, message: bytes) -> Deferred[int | None]:
        """
        Send one message and learn when it is delivered, as AMQP publisher
        confirms or MQTT's PUBACK.

        In a session the Deferred fires with the message's sequence number
        once the peer has acknowledged it (it was handed to the peer's
        application), or fails with a L{DeliveryFailed} carrying the
        message when it never will be: L{MessageLost} (the session ended
        before the acknowledgement: it may have arrived), L{MessageDropped}
        (an overflow policy), L{DeliveryCancelled}.  Without a session it
        fires with L{None} once the message is written to the connection:
        at most once, as the connection may still die with it.

        @raise LocalProtocolError: as L{sendMessage}.
        @raise QueueFull: as L{sendMessage}.
        """
        receipt: Deferred[int | None] = Deferred()
        self._sendCarefully(message, receipt)
        return receipt

    def close(
        self,
        code: int = CloseCode.NORMAL,
        reason: str = "",
        retryAfter: float | None = None,
    ) -> None:
        """
        Send CLOSE and disconnect: politely, but an abort follows if the
        transport has not flushed within C{closeTimeout}.
        """
        core = self.core
        if core is None or core.state is State.CLOSED:
            return
        core.close(code, reason, retryAfter, self.clock.seconds())
        self._flush()
        self._reason = ClosedLocally(code, reason)
        self._disconnect()

    def abort(self, reason: Exception) -> None:
        """
        Drop the connection at once; L{closeReason} will be C{reason}.
        """
        if self.core is not None:
            self.core.state = State.CLOSED
        self._reason = reason
        self._cancelTimers()
        self.transport.abortConnection()  # type: ignore[union-attr]

    @property
    def stats(self) -> HeartbeatStats:
        core = self.core
        if core is None:
            raise LocalProtocolError("no connection yet")
        self.flushCounters()
        live = core.liveness
        rtt = core.rtt
        return HeartbeatStats(
            state=core.state.value,
            interval=core.interval,
            timeout=live.timeout,
            srtt=rtt.srtt,
            rttvar=rtt.rttvar,
            lastRtt=rtt.last,
            minRtt=rtt.minimum,
            connectedAt=core.connectedAt,
            handshakeAt=core.handshakeAt,
            lastReceived=live.lastReceived,
            lastSent=live.lastSent,
            pingsSent=core.pingsSent,
            pongsReceived=core.pongsReceived,
            pingsReceived=core.pingsReceived,
            framesIn=core.framesIn,
            framesOut=core.framesOut,
            bytesIn=core.bytesIn,
            bytesOut=core.bytesOut,
            messagesIn=core.messagesIn,
            messagesOut=core.messagesOut,
        )

    # Internals

    def _flush(self) -> None:
        """
        Send what the engine produced: PONGs, PINGs, HELLO, CLOSE.

        These few bytes are written straight to the socket when nothing is
        queued ahead of them in the transport, which is nearly always on an
        idle link: Twisted's C{write} would instead arm the socket for
        writing (two C{epoll_ctl} calls) and send in the next reactor pass,
        more than the heartbeat itself costs (bench/idle_fleet.py).
        Application messages keep Twisted's buffering, which batches them.
        """
        assert self.core is not None
        data = self.core.dataToSend()
        if not data:
            return
        t = self._plainTCP
        if (
            t is not None
            and not self.outputPaused
            and not t._tempDataLen
            and t.offset == len(t.dataBuffer)
            and t.connected
            and not t.disconnecting
            and not t._writeDisconnected
            and not t.TLS
        ):
            try:
                sent = t.socket.send(data)
            except OSError:
                sent = 0  # would block, or an error Twisted's own write will report
            if sent == len(data):
                return
            data = data[sent:]
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.outputPaused:
            # The data path while the peer is behind (bench/datapath.py: most
            # of a burst): one comparison, as cheap as without a budget.
            self._pendingWhilePaused += len(data)
            if self._pendingWhilePaused > self._pausedLimit and not self._mayHold(len(data)):
                return
        self.transport.write(data)  # type: ignore[union-attr]

    def _mayHold(self, size: int) -> bool:
        """
        Past the cheap check: charge the server's memory budget, and drop a
        peer past either bound (it is not reading).
        """
        budget = self._budget
        if budget is not None:
            if not budget.admit(self, size):
                self._slowConsumer(budget.limit)
                return False
            budget.used += size
            self._charged += size
        if self._pendingWhilePaused > self._maxPending:
            self._slowConsumer()
            return False
        return True

    def _releaseOutput(self) -> None:
        if self._charged:
            assert self._budget is not None
            self._budget.release(self._charged)
            self._charged = 0

    # IPushProducer: the transport tells us when its buffer is full, and we
    # pass it on to the application's producer, if it registered one.

    def pauseProducing(self) -> None:
        if self.outputPaused:
            return  # the transport says it again at every write while full
        self.outputPaused = True
        if self._producer is not None:
            self._updateProducer()

    def resumeProducing(self) -> None:
        self.outputPaused = False
        self._pendingWhilePaused = 0
        if self._resumedFast is not None:
            self._resumedFast()
        self._releaseOutput()  # the transport has written it all
        if self._producer is not None:
            self._updateProducer()

    def stopProducing(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()

    # IConsumer, for the application: the transport's own producer slot is
    # taken by this protocol, so producers register here instead.

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """
        Have C{producer} paused while the peer does not read (the
        transport's buffer is full) or, in a session, while the retransmit
        buffer is full (the peer does not acknowledge), and resumed once
        the transport has drained and the buffer is at most half full.
        Streaming producers only.  In a session, what the producer still
        sends after being paused is kept (up to twice the buffer's bounds)
        rather than refused: backpressure instead of loss.
        """
        if not streaming:
            raise LocalProtocolError("only streaming (push) producers are supported")
        self._attachProducer(producer, elastic=True)

    def _attachProducer(self, producer: IPushProducer, elastic: bool) -> None:
        if self._producer is not None:
            raise LocalProtocolError(f"a producer is already registered: {self._producer!r}")
        self._producer = producer
        self._producerPaused = False
        self._elastic = elastic
        session = self.session
        if elastic and session is not None:
            session.elastic = True
        self._updateProducer()

    def unregisterProducer(self) -> None:
        session = self.session
        if self._elastic and session is not None:
            session.elastic = False
        self._producer = None
        self._producerPaused = self._elastic = False

    def _updateProducer(self) -> None:
        """
        Pause the registered producer when the link is blocked; resume it
        only once it has drained (hysteresis: no pause/resume per message).
        """
        producer = self._producer
        if producer is None:
            return
        session = self.session
        if self._producerPaused:
            if not self.outputPaused and (session is None or session.hasRoom):
                self._producerPaused = False
                producer.resumeProducing()
        elif self.outputPaused or (session is not None and session.isFull):
            self._producerPaused = True
            producer.pauseProducing()

    # Inbound flow control, for an application that cannot keep up.

    def pauseReading(self) -> None:
        """
        Stop reading from the peer (the application's own output is full).
        The silence this causes is ours, not the peer's: the dead-peer
        timeout is suspended until L{resumeReading}; we keep pinging so the
        peer hears from us.

        @raise LocalProtocolError: before the handshake (it sets the
            timeout that is suspended; the handshake timeout applies).
        """
        core = self.core
        if core is None or core.state is not _OPEN:
            raise LocalProtocolError("pauseReading: the connection is not open")
        if self._readingPaused:
            return
        self._readingPaused = True
        self._savedTimeout = core.liveness.timeout
        core.liveness.timeout = None
        if self._sweeper is not None:
            self._sweeper.remove(self)
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeReading(self) -> None:
        """
        Read from the peer again; its silence counts from now.
        """
        if not self._readingPaused:
            return
        self._readingPaused = False
        core = self.core
        assert core is not None
        if core.state is _CLOSED:
            return
        core.liveness.timeout = self._savedTimeout
        core.liveness.lastReceived = core.liveness.lastPong = self._now()
        if self._sweeper is not None:
            self._sweeper.add(self, core.liveness, type(self)._declareDead)
        if self._timer is not None and self._timer.active:
            self._timer.start()
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def _slowConsumer(self, budget: int | None = None) -> None:
        if budget is None:
            limit = self.config.maxPendingOutput
            why = f"over {limit} bytes unread"
        else:
            why = f"not reading while the server's memory budget ({budget} bytes) is spent"
        self.peerLog("slow-consumer", "warn", "{peer} is {why}; dropping it", why=why)
        # It is not reading, so a CLOSE would not reach it: abort.
        self.abort(ClosedLocally(CloseCode.SLOW_CONSUMER, why))

    def peerLog(self, kind: str, level: str, format: str, **fields: Any) -> None:
        """
        Log a line about something the peer did or caused, with C{peer} in
        the fields.  On a server (a factory with a C{peerLog} limiter) at
        most one line per peer host and C{kind} per period gets through;
        the next one says how many were suppressed.
        """
        limiter = self._logLimiter
        if limiter is not None:
            suppressed = limiter.allow(kind, self.peerHost)
            if suppressed is None:
                return
            if suppressed:
                format += " ({suppressed} more like this from {host} not logged)"
                fields.update(suppressed=suppressed, host=self.peerHost)
        getattr(self.log, level)(format, peer=self.peer, **fields)

    def _sendAck(self) -> None:
        self._ackCall = None
        if self.core is not None:
            self.core.flushAck(self._now())
            self._flush()

    def _dispatch(self, event: object) -> None:
        if type(event) is PingReceived:  # the common one first
            self.pingReceived(event.at)
            if self._pingHook:
                self.factory.heartbeatPingReceived(self, event.at, event.gap)
        elif isinstance(event, PongReceived):
            adaptive = self._adaptive
            if adaptive is not None and adaptive.survived(event.idle, self._now()):
                self._applyAdaptive("raised")
            self.pongReceived(event.rtt)
        elif isinstance(event, HandshakeCompleted):
            self._handshakeDone(event)
        elif isinstance(event, CloseReceived):
            self._peerClosed(event)
        elif isinstance(event, SessionStarted):
            if event.resumed:
                self.peerLog(
                    "resumed",
                    "info",
                    "Session resumed with {peer}: {replayed} messages sent again",
                    replayed=event.replayed,
                )
            self.sessionStarted(event.session, event.resumed)
            notify = getattr(self.factory, "heartbeatSessionStarted", None)
            if notify is not None:
                notify(self, event)
        elif isinstance(event, MessageRefused):
            notify = getattr(self.factory, "heartbeatMessageRefused", None)
            if notify is not None:
                notify(self, event)  # the factory reports it (its queue held it)
            else:
                self.peerLog(
                    "refused", "warn", "Message not sent to {peer}: {reason}", reason=event.reason
                )
        elif isinstance(event, SessionLost):
            self.peerLog(
                "session-lost",
                "warn",
                "Session lost with {peer} ({reason}): {count} messages may not have arrived",
                reason=event.reason,
                count=len(event.undelivered),
            )
            self.sessionLost(event.undelivered, event.reason)
            notify = getattr(self.factory, "heartbeatSessionLost", None)
            if notify is not None:
                notify(self, event)

    def sessionStarted(self, session: Session, resumed: bool) -> None:
        """
        The handshake attached a session (both sides asked for one): new,
        or C{resumed} with what the peer missed already sent again.
        """

    def sessionLost(self, undelivered: list[bytes], reason: str) -> None:
        """
        The peer no longer has our session: C{undelivered} were sent and
        never acknowledged; they may or may not have arrived and are not
        sent again.  Messages queued but never sent are not among them:
        they go out on this connection.
        """

    @property
    def session(self) -> Session | None:
        """The session in use on this connection, if any."""
        return None if self.core is None else self.core.session

    def pingReceived(self, at: float) -> None:
        """
        The peer pinged (the PONG is already sent).  Servers enforce ping
        rates here.
        """

    def _handshakeDone(self, event: HandshakeCompleted) -> None:
        if self._handshakeCall is not None and self._handshakeCall.active():
            self._handshakeCall.cancel()
        self._handshakeCall = None
        session = self.session
        if session is not None and self._elastic:
            session.elastic = True
        sweeper = getattr(self.factory, "idleSweeper", None)
        if self.role is Role.SERVER and sweeper is not None:
            # One shared timer for all of a server's connections.
            self._sweeper = sweeper
            sweeper.add(self, self.core.liveness, type(self)._declareDead)  # type: ignore[union-attr]
        else:
            if self._adaptive is not None:
                assert self.core is not None
                self._baseTimeout = self.core.liveness.timeout or 0.0
                self._applyAdaptive()
            # Only clients (and servers without a sweeper) need a timer each;
            # made here, not per connection attempt.
            self._timer = IdleTimer(self.clock, self.core.liveness, self._onTimer)  # type: ignore[union-attr]
            self._timer.start()
        self.peerLog(
            "handshake",
            "debug",
            "Handshake with {peer} done: interval {interval}s, timeout {timeout}s",
            interval=event.interval,
            timeout=event.timeout,
        )
        # The engine needs the session provider only for the handshake.
        if self.core is not None:
            self.core.sessionFor = None
            if self.core.role is Role.CLIENT:
                # A client sends from now on (its factory flushes its queue
                # next), usually through a bound method taken now: the fast
                # path goes in place at once (a server's waits for its first
                # message: most of a fleet's connections idle).
                self._installFastSend()
        # The factory first: it flushes messages queued while disconnected,
        # so they go out before anything the application sends now.
        notify = getattr(self.factory, "heartbeatConnectionReady", None)
        if notify is not None:
            notify(self)
        self.handshakeCompleted()
        waiters, self._readyWaiters = self._readyWaiters or [], None
        for d in waiters:
            d.callback(self)

    def _applyAdaptive(self, why: str | None = None) -> None:
        """
        Ping at the adaptive interval (within 80 % of the server's eviction
        timeout), and give each PING what the configured interval and
        timeout left for its answer.
        """
        core, adaptive = self.core, self._adaptive
        assert core is not None and adaptive is not None and core.peerHello is not None
        interval = adaptive.current
        serverTimeout = core.peerHello.timeout
        if serverTimeout:
            interval = min(interval, 0.8 * serverTimeout)
        interval = max(interval, core.interval or interval)
        liveness = core.liveness
        if interval == liveness.interval:
            return
        liveness.interval = interval
        liveness.timeout = interval + max(self._baseTimeout - (core.interval or 0.0), 0.0)
        if why is not None:
            self.log.info(
                "Heartbeat interval {why} to {interval:.3g}s with {peer}: "
                "the path kept {good:.3g}s of silence",
                why=why,
                interval=interval,
                peer=self.peer,
                good=adaptive.good,
            )

    def _installFastSend(self) -> None:
        """
        Sending is framing, counting and writing (and, in a session,
        numbering and keeping): done by a closure over what it needs (no
        attribute lookups per message) put in place of L{sendMessage} on
        this instance at the first message, unless a subclass overrides it.
        Its counters reach the engine's when anything reads them
        (L{flushCounters}).  Anything unusual (closed, too large, a full
        session buffer, the budget refusing) takes the careful path, which
        says precisely what happened.

        When is a write known to have happened?  A server never pings on a
        timer: it needs no time.  A client on Linux asks the kernel when the
        socket last sent (TCP_INFO) once per heartbeat check, and only if it
        wrote since the last one: no clock per message.  Elsewhere, a clock
        reading per message, as before.
        """
        core = self.core
        assert core is not None
        self._fast = -1
        if type(self).sendMessage is not HeartbeatProtocol.sendMessage:
            return  # a subclass's own: it calls this class's through super()
        self._fast = 1
        write = self.transport.write  # type: ignore[union-attr]
        slow = HeartbeatProtocol._sendPlain
        protocol = self
        pausedLimit = self._pausedLimit
        count = size = held = 0
        timed = core.role is Role.CLIENT and not self._kernelKnowsLastSent()
        self._kernelClock = core.role is Role.CLIENT and not timed
        liveness, now, open_ = core.liveness, self._now, _OPEN

        def overHeld(length: int) -> bool:
            # Past the cheap bound of what we hold for a peer that is behind:
            # the careful path decides (budget, slow peer).
            nonlocal held
            protocol._pendingWhilePaused += held
            held = 0
            return protocol._pendingWhilePaused > pausedLimit and not protocol._mayHold(length)

        def drain() -> int:
            nonlocal count, size
            n = count
            if n:
                core.messagesOut += n
                core.bytesOut += size
                count = size = 0
                self._wroteSinceCheck = True
            return n

        def resumed() -> None:
            nonlocal held
            held = 0

        self._resumedFast = resumed
        self._drainFast = drain
        session = core.session
        if session is None:
            limit, pack = core.fastLimit, _packHeader

            def sendMessage(message: bytes) -> None:
                nonlocal count, size, held
                length = len(message) + 2
                if length > limit or core.state is not open_:
                    slow(protocol, message)  # raises the precise error
                    return
                if protocol.outputPaused:
                    # The peer is behind: count what we hold for it.
                    held += length + 4
                    if held > pausedLimit and overHeld(length + 4):
                        return
                count += 1
                size += length + 4
                if timed:
                    liveness.lastSent = now()
                write(pack(length, 4, 0) + message)

            self.sendMessage = sendMessage  # type: ignore[method-assign]
            return

        unacked = session._unacked
        # A message that would fill the buffer takes the careful path: it
        # pauses a producer on that edge (so no check after each append).
        fullAt, maxBytes = session.maxMessages - 1, session.maxBytes
        largest = core.peerMaxFrame - SESSION_OVERHEAD
        packSeq, packSeqAck = _SEQ_HEADER.pack, _SEQ_ACK_HEADER.pack
        budget = session.budget  # a server's, for the session's life; None for a client

        def sendSequenced(message: bytes) -> None:
            nonlocal count, size, held
            n = len(message)
            if (
                n > largest
                or core.state is not open_
                or core.session is not session
                or len(unacked) >= fullAt
                or session.unackedBytes + n >= maxBytes
            ):
                slow(protocol, message)  # full, closed, too large: said precisely
                return
            if budget is not None:
                cost = n + MESSAGE_COST
                if budget.used + cost > budget.limit:
                    slow(protocol, message)  # the budget decides (and may refuse)
                    return
                budget.used += cost
            seq = session.nextSeq
            session.nextSeq = seq + 1
            unacked.append((seq, message))
            session.unackedBytes += n
            session.sent = seq
            if session.pendingAcks:
                # The acknowledgement we owe rides along.
                session.pendingAcks = 0
                frame = packSeqAck(n + 18, 4, 3, seq, session.received) + message
            else:
                frame = packSeq(n + 10, 4, 1, seq) + message
            if protocol.outputPaused:
                held += len(frame)
                if held > pausedLimit and overHeld(len(frame)):
                    return
            count += 1
            size += len(frame)
            if timed:
                liveness.lastSent = now()
            write(frame)

        self.sendMessage = sendSequenced  # type: ignore[method-assign]

    def _kernelKnowsLastSent(self) -> bool:
        self._socket = sock = findSocket(self.transport)
        return sock is not None and lastDataSent(sock) is not None

    def flushCounters(self) -> None:
        """Bring the engine's counters up to date (the fast path counts apart)."""
        if self._drainFast is not None:
            self._drainFast()

    def _refreshLastSent(self, now: float) -> None:
        """
        Before a heartbeat check: if the fast path wrote since the last one
        without reading the clock, learn when the socket last sent.
        """
        drain = self._drainFast
        if drain is None:
            return
        drain()
        if not self._wroteSinceCheck:
            return
        self._wroteSinceCheck = False
        core = self.core
        assert core is not None
        if not self._kernelClock or self._socket is None:
            return  # timed per message (or a server: no pings on a timer)
        t = self._plainTCP
        if t is not None and (t._tempDataLen or t.offset < len(t.dataBuffer)):
            sent = now  # still writing
        else:
            ago = lastDataSent(self._socket)
            # The kernel counts in ticks: never take a write for older than it is.
            sent = now if ago is None else now - max(0.0, ago - KERNEL_TICK)
        if sent > core.liveness.lastSent:
            core.liveness.lastSent = sent

    def _peerClosed(self, event: CloseReceived) -> None:
        self._reason = PeerClosed(event.code, event.reason, event.retryAfter)
        self.peerLog(
            "closed", "info", "{peer} closed the connection: {reason}", reason=self._reason
        )
        self._disconnect()

    def _protocolError(self, error: RemoteProtocolError) -> None:
        assert self.core is not None
        if isinstance(error, Refused):
            self.peerLog("refused", "warn", "Refusing {peer}: {reason}", reason=str(error))
            self._reason = ClosedLocally(error.code, str(error))
        else:
            self.peerLog(
                "protocol-error",
                "warn",
                "Protocol error from {peer}: {reason}; closing",
                reason=str(error),
            )
            self._reason = ProtocolViolation(error.code, str(error))
        self._disconnect()

    def _disconnect(self) -> None:
        """
        Flush and close; abort if that takes longer than C{closeTimeout}
        (a peer that does not read must not hold the connection open).
        """
        if self._timer is not None:
            self._timer.stop()
        if self._sweeper is not None:
            self._sweeper.remove(self)
            self._sweeper = None
        if self._handshakeCall is not None and self._handshakeCall.active():
            self._handshakeCall.cancel()
        self._handshakeCall = None
        if self._closeCall is None:
            self._closeCall = self.clock.callLater(self.config.closeTimeout, self._closeExpired)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _closeExpired(self) -> None:
        self._closeCall = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _handshakeExpired(self) -> None:
        self._handshakeCall = None
        self.peerLog(
            "handshake-timeout",
            "warn",
            "No handshake from {peer} within {timeout}s; aborting",
            timeout=self.config.handshakeTimeout,
        )
        self.abort(HandshakeTimeout(self.config.handshakeTimeout))

    def _onTimer(self, now: float) -> bool:
        core = self.core
        assert core is not None
        if core.state is not State.OPEN:
            return False
        if self._drainFast is not None:
            self._refreshLastSent(now)
        verdict = core.tick(now)
        if verdict is Verdict.PING:
            self._flush()
        elif verdict is Verdict.DEAD:
            self._declareDead(now)
            return False
        return True

    def _declareDead(self, now: float) -> None:
        assert self.core is not None
        silence = self.core.liveness.silence(now)
        timeout = self.core.liveness.timeout
        assert timeout is not None
        what = "PONG" if self.core.liveness.requirePongs else "data"
        adaptive, idle = self._adaptive, self.core.unansweredIdle
        if adaptive is not None and idle is not None and adaptive.died(idle, now):
            self.log.info(
                "The path died after {idle:.3g}s of silence: next interval {interval:.3g}s",
                idle=idle,
                interval=adaptive.current,
            )
        self.peerLog(
            "dead",
            "warn",
            "No {what} from {peer} for {silence:.3f}s (timeout {timeout}s); aborting",
            what=what,
            silence=silence,
            timeout=timeout,
        )
        self.abort(HeartbeatTimeout(silence, timeout))

    def _cancelTimers(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._sweeper is not None:
            self._sweeper.remove(self)
            self._sweeper = None
        for name in ("_handshakeCall", "_closeCall", "_ackCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
