"""
Errors and disconnect reasons.

Two families, kept apart as h11 does:

 - L{LocalProtocolError}: I{we} (the application) misused the API, for
   example by sending a message larger than the peer accepts.  Raised to the
   caller; the connection is unaffected.
 - L{RemoteProtocolError}: the I{peer} broke the wire protocol.  Never raised
   into the reactor: the connection is closed with a CLOSE frame carrying
   L{RemoteProtocolError.code} and the loss is reported as L{ProtocolViolation}.

The C{connectionLost} reasons below subclass Twisted's own
L{twisted.internet.error} classes, so code that already tells
C{ConnectionDone} from C{ConnectionLost} keeps working, while code that cares
can tell a heartbeat timeout from any other loss.
"""

from __future__ import annotations

from enum import IntEnum

from twisted.internet import error


class CloseCode(IntEnum):
    """
    Reason codes carried by CLOSE frames (see docs/protocol.md).
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_VERSION = 1003
    FRAME_TOO_LARGE = 1004
    HANDSHAKE_TIMEOUT = 1005
    AUTH_FAILED = 1006
    TOO_MANY_CONNECTIONS = 1007
    TOO_MANY_PINGS = 1008
    IDLE_TIMEOUT = 1009
    SLOW_CONSUMER = 1010
    INTERNAL_ERROR = 1011

    @classmethod
    def describe(cls, code: int) -> str:
        """
        A readable name for any code, including ones this version does not know.
        """
        try:
            return cls(code).name
        except ValueError:
            return f"code {code}"


class _Plain:
    """
    Mixin: print the message alone, without Twisted's generic prefix.
    """

    args: tuple[object, ...]

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class KeepaliveError(Exception):
    """
    Base class of every exception this library raises.
    """


class LocalProtocolError(KeepaliveError):
    """
    The application asked for something the protocol does not allow.
    """


class RemoteProtocolError(KeepaliveError):
    """
    The peer sent something the protocol does not allow.

    @ivar code: the L{CloseCode} to send back.
    """

    def __init__(self, message: str, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Refused(RemoteProtocolError):
    """
    The peer did nothing wrong, but this side will not serve it now (a
    limit: connections, sessions, memory): CLOSE with the code and a
    retry-after hint.
    """

    def __init__(
        self,
        message: str,
        retryAfter: float | None,
        code: CloseCode = CloseCode.TOO_MANY_CONNECTIONS,
    ) -> None:
        super().__init__(message, code)
        self.retryAfter = retryAfter


#: Longest piece of peer-supplied text (a CLOSE reason) put in a message
#: or a log line; the spec allows 1,024 bytes.
PEER_TEXT_LIMIT = 120


def peerText(text: str, limit: int = PEER_TEXT_LIMIT) -> str:
    """
    Text a peer chose, made safe for one log line: printable (repr-escaped)
    and at most C{limit} characters, with a mark where it was cut.
    """
    shown = repr(text)[1:-1]
    if len(shown) > limit:
        return shown[:limit] + f"...({len(text)} chars)"
    return shown


class HeartbeatTimeout(_Plain, error.ConnectionAborted):
    """
    The peer was silent for longer than the timeout; the connection was aborted.

    @ivar silence: seconds since the last inbound byte when the abort happened.
    @ivar timeout: the configured bound.
    """

    def __init__(self, silence: float, timeout: float) -> None:
        super().__init__(f"no data from peer for {silence:.3f}s (timeout {timeout:g}s)")
        self.silence = silence
        self.timeout = timeout


class HandshakeTimeout(_Plain, error.ConnectionAborted):
    """
    The HELLO exchange did not complete in time; the connection was aborted.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"handshake not completed within {timeout:g}s")
        self.timeout = timeout


class ProtocolViolation(_Plain, error.ConnectionLost):
    """
    The peer broke the wire protocol; we sent CLOSE and dropped the connection.

    @ivar code: the L{CloseCode} we sent.
    """

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{CloseCode.describe(code)}: {detail}")
        self.code = code
        self.detail = detail


class PeerClosed(_Plain, error.ConnectionDone):
    """
    The peer sent a CLOSE frame.

    @ivar code: its reason code (an L{int}; compare with L{CloseCode}).
    @ivar reason: its reason text.
    @ivar retryAfter: its hint, in seconds, before reconnecting, or L{None}.
    """

    def __init__(self, code: int, reason: str, retryAfter: float | None) -> None:
        hint = "" if retryAfter is None else f", retry after {retryAfter:g}s"
        super().__init__(f"closed by peer: {CloseCode.describe(code)} '{peerText(reason)}'{hint}")
        self.code = code
        self.reason = reason
        self.retryAfter = retryAfter


class ClosedLocally(_Plain, error.ConnectionDone):
    """
    The application (or a server limit) closed the connection with a CLOSE frame.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed locally: {CloseCode.describe(code)} {reason!r}")
        self.code = code
        self.reason = reason


class DeliveryFailed(KeepaliveError):
    """
    A message sent with a receipt (L{HeartbeatProtocol.sendConfirmed},
    L{KeepaliveClientFactory.sendConfirmed}) will never be confirmed.

    @ivar message: the message itself, so the application can resend or
        record it.
    """

    def __init__(self, message: bytes, why: str) -> None:
        super().__init__(why)
        self.message = message


class MessageLost(DeliveryFailed):
    """
    The session ended (the server no longer had it, or keeps none) after the
    message was written and before it was acknowledged: it may or may not
    have arrived, and is not sent again.
    """


class MessageDropped(DeliveryFailed):
    """
    The overflow policy of a full send queue or retransmit buffer dropped
    the message (never written, or never acknowledged).
    """


class MessageTooLarge(DeliveryFailed):
    """
    The message is larger than the peer accepts (learned at the handshake,
    after the message was queued): it was refused and never written.
    """


class DeliveryCancelled(DeliveryFailed):
    """
    The factory (or connection) was stopped before the message was
    acknowledged.
    """


class ClusterError(KeepaliveError):
    """
    A cluster operation (push to another node, presence) did not happen.
    """


class ClusterUnavailable(ClusterError):
    """
    The cluster backend (Redis) cannot be reached: local clients are still
    served, nothing crosses nodes until it returns.
    """


class UnknownClient(ClusterError):
    """
    No node of the cluster has a client connected under that id.
    """

    def __init__(self, clientId: str) -> None:
        super().__init__(f"no client {peerText(clientId)!r} is connected to any node")
        self.clientId = clientId


class NotDelivered(ClusterError):
    """
    The client's node had it, but the client could not take the message
    (its session buffer is full, or the message is too large for it).
    """


class ClusterBusy(ClusterError):
    """
    Too many cross-node requests are waiting for their answer: the caller
    is told at once rather than queued without bound.
    """


class ClusterTimeout(ClusterError):
    """
    The other node did not answer in time (it may have died): the message
    may or may not have reached the client.
    """
