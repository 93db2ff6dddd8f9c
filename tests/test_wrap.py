"""
KeepaliveWrappingFactory on a fake clock: the reply rules of the
byte-level heartbeat and the application ping, exactly.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_keepalive import HeartbeatTimeout
from twisted_keepalive.wrap import KeepaliveWrapper, KeepaliveWrappingFactory

from .helpers import ClockTestCase


class App(Protocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.outstanding = 0
        self.pings: list[Deferred[str]] = []

    def dataReceived(self, data: bytes) -> None:
        self.got.append(data)

    def ping(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.pings.append(d)
        self.transport.write(b"APP-PING\r\n")
        return d


class WrapperTests(ClockTestCase):
    def connect(self, **settings: Any) -> tuple[KeepaliveWrapper, App, StringTransport]:
        settings.setdefault("interval", 1.0)
        settings.setdefault("timeout", 3.0)
        factory = KeepaliveWrappingFactory(
            ClientFactory.forProtocol(App), clock=self.clock, **settings
        )
        wrapper: Any = factory.buildProtocol(None)
        transport = StringTransport()
        wrapper.makeConnection(transport)
        self.addCleanup(self.close, wrapper)
        return wrapper, wrapper.wrappedProtocol, transport

    def close(self, wrapper: KeepaliveWrapper) -> None:
        if wrapper.closeReason is None:
            wrapper.connectionLost(Failure(ConnectionDone()))

    def test_replyTakenOutOnlyWhileAPingIsOutstanding(self) -> None:
        wrapper, app, t = self.connect(pingBytes=b"PING\r\n", reply=b"+PONG\r\n")
        wrapper.dataReceived(b"+PONG\r\n")  # no ping sent: the application's
        self.assertEqual(app.got, [b"+PONG\r\n"])
        self.clock.advance(1.0)
        self.assertEqual(t.value(), b"PING\r\n")
        # The reply split across reads, the application's data behind it.
        self.clock.advance(0.2)
        wrapper.dataReceived(b"+PO")
        wrapper.dataReceived(b"NG\r\n:42\r\n")
        self.assertEqual(app.got, [b"+PONG\r\n", b":42\r\n"])
        self.assertEqual(wrapper.repliesMatched, 1)
        self.assertAlmostEqual(wrapper.rtt.last, 0.2)

    def test_noPingWhileTheApplicationIsBusy(self) -> None:
        wrapper, app, t = self.connect(
            pingBytes=b"PING\r\n", reply=b"+PONG\r\n", busy=lambda p: p.outstanding > 0
        )
        app.outstanding = 1
        self.clock.advance(1.0)
        self.assertEqual(t.value(), b"")
        wrapper.dataReceived(b":1\r\n")  # its reply: life
        app.outstanding = 0
        self.clock.advance(1.0)
        self.assertEqual(t.value(), b"PING\r\n")

    def test_somethingElseFirstIsPassedOn(self) -> None:
        wrapper, app, t = self.connect(pingBytes=b"PING\r\n", reply=b"+PONG\r\n")
        self.clock.advance(1.0)
        wrapper.dataReceived(b":7\r\n")
        self.assertEqual(app.got, [b":7\r\n"])
        wrapper.dataReceived(b"+PONG\r\n")  # no longer taken: the ping was given up
        self.assertEqual(app.got, [b":7\r\n", b"+PONG\r\n"])

    def test_applicationPing(self) -> None:
        wrapper, app, t = self.connect(ping=lambda p: p.ping())
        self.clock.advance(1.0)
        self.assertEqual((t.value(), len(app.pings)), (b"APP-PING\r\n", 1))
        self.clock.advance(1.0)  # still outstanding: no second one
        self.assertEqual(len(app.pings), 1)
        self.clock.advance(0.5)
        wrapper.dataReceived(b"+PONG\r\n")  # goes to the application, whose ping fires
        self.assertEqual(app.got, [b"+PONG\r\n"])
        app.pings[0].callback("PONG")
        self.assertEqual(wrapper.rtt.last, 1.5)

    def test_silenceIsDeath(self) -> None:
        wrapper, app, t = self.connect(ping=lambda p: p.ping())
        self.clock.advance(3.0)
        self.assertTrue(t.disconnecting or t.disconnected)
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(wrapper.closeReason.value, HeartbeatTimeout)

    def test_badSettings(self) -> None:
        for settings in (
            {},
            {"ping": lambda p: None, "pingBytes": b"P"},
            {"reply": b"+PONG", "ping": lambda p: None},
            {"pingBytes": b"P", "interval": 5.0, "timeout": 5.0},
        ):
            with self.assertRaises(ValueError, msg=settings):
                KeepaliveWrappingFactory(ClientFactory(), **settings)  # type: ignore[arg-type]
