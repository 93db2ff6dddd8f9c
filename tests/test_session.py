"""
Sessions (protocol version 2): exactly once and in order across dropped
connections, on a fake clock with in-memory transports.

The central test cuts the connection after every possible number of
delivered bytes, in the handshake, the messages, the acknowledgements and
the replay, reconnects, and checks that each side got every message of the
other exactly once, in order.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol, Role
from twisted_keepalive.client import KeepaliveClientFactory, Overflow, QueueFull
from twisted_keepalive.connection import KeepaliveConnection, SessionLost, SessionStarted
from twisted_keepalive.errors import RemoteProtocolError
from twisted_keepalive.frames import (
    Hello,
    encodeAck,
    encodeHello,
    encodeSequenced,
)
from twisted_keepalive.server import KeepaliveServerFactory, ServerProtocol
from twisted_keepalive.session import Session

from .helpers import ClockTestCase

CONFIG = HeartbeatConfig(interval=1.0, timeout=3.0, ackEvery=4, ackDelay=0.05)


class Client(HeartbeatProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.factory.got.append(message)


class Server(ServerProtocol):
    pass


class RecordingServer(KeepaliveServerFactory):
    protocol = Server

    def __init__(self, clock: Clock, toSend: list[bytes], **kw: Any) -> None:
        super().__init__(CONFIG, clock=clock, **kw)
        self.got: list[bytes] = []
        self.toSend = toSend
        self.expired: list[int] = []

    def clientConnected(self, protocol: HeartbeatProtocol) -> None:
        while self.toSend:  # first connection only: the rest is the session's job
            protocol.sendMessage(self.toSend.pop(0))

    def messageReceived(self, protocol: HeartbeatProtocol, message: bytes) -> None:
        self.got.append(message)

    def sessionExpired(self, session: Session) -> None:
        self.expired.append(len(session))


class RecordingClient(KeepaliveClientFactory):
    protocol = Client

    def __init__(self, clock: Clock, **kw: Any) -> None:
        super().__init__(CONFIG, resume=True, clock=clock, **kw)
        self.got: list[bytes] = []
        self.lost: list[list[bytes]] = []

    def sessionLost(self, undelivered: list[bytes], reason: str) -> None:
        self.lost.append(undelivered)


class Link:
    """
    One connection between the factories, in memory.  L{pump} can stop
    after a budget of delivered bytes, cutting a frame anywhere.
    """

    def __init__(self, client: KeepaliveClientFactory, server: KeepaliveServerFactory) -> None:
        self.client = client.buildProtocol(None)
        self.server = server.buildProtocol(None)
        self.ct, self.st = StringTransport(), StringTransport()
        self.server.makeConnection(self.st)
        self.client.makeConnection(self.ct)
        self.delivered = 0
        self.up = True

    def pump(self, budget: int | None = None) -> bool:
        """Move bytes until quiet; False if the budget ran out (and cut)."""
        while self.up:
            moved = False
            for source, sink in ((self.ct, self.server), (self.st, self.client)):
                data = source.value()
                if not data:
                    continue
                source.clear()
                if budget is not None and self.delivered + len(data) > budget:
                    sink.dataReceived(data[: budget - self.delivered])
                    self.delivered = budget
                    self.drop()
                    return False
                self.delivered += len(data)
                sink.dataReceived(data)
                moved = True
            if not moved:
                return True
        return False

    def drop(self) -> None:
        if self.up:
            self.up = False
            self.client.connectionLost(Failure(ConnectionLost("cut")))
            self.server.connectionLost(Failure(ConnectionLost("cut")))


def settle(clock: Clock, link: Link) -> None:
    """Let ack timers fire and their ACKs cross."""
    for _ in range(3):
        clock.advance(CONFIG.ackDelay)
        link.pump()


def exchange(cuts: list[int], count: int = 5) -> tuple[RecordingClient, RecordingServer, Clock]:
    """
    Client and server each send C{count} messages; the connection is cut
    after each budget in C{cuts} (bytes delivered on that connection), then
    a last connection runs to completion.
    """
    clock = Clock()
    fromServer = [b"s%d" % i for i in range(count)]
    server = RecordingServer(clock, list(fromServer))
    client = RecordingClient(clock)
    for i in range(count):
        client.sendMessage(b"c%d" % i)
    for budget in cuts:
        link = Link(client, server)
        if link.pump(budget):
            settle(clock, link)
            link.drop()
    link = Link(client, server)
    link.pump()
    settle(clock, link)
    link.drop()
    server.forgetSessions()
    return client, server, clock


class ResumeEverywhereTests(SynchronousTestCase):
    def full(self) -> int:
        """Bytes a complete exchange delivers on one connection."""
        clock = Clock()
        server = RecordingServer(clock, [b"s%d" % i for i in range(5)])
        client = RecordingClient(clock)
        for i in range(5):
            client.sendMessage(b"c%d" % i)
        link = Link(client, server)
        link.pump()
        settle(clock, link)
        total = link.delivered
        link.drop()
        server.forgetSessions()
        return total

    def check(self, cuts: list[int]) -> None:
        client, server, clock = exchange(cuts)
        self.assertEqual(server.got, [b"c%d" % i for i in range(5)], cuts)
        self.assertEqual(client.got, [b"s%d" % i for i in range(5)], cuts)
        self.assertEqual(client.lost, [], cuts)
        self.assertEqual(clock.getDelayedCalls(), [], cuts)

    def test_cutAtEveryByte(self) -> None:
        total = self.full()
        self.assertGreater(total, 150)
        for budget in range(total + 1):
            self.check([budget])

    def test_cutTwiceIncludingDuringTheReplay(self) -> None:
        total = self.full()
        for first in range(0, total + 1, 7):
            for second in range(0, total + 1, 11):
                self.check([first, second])

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=400), max_size=4))
    def test_anyCuts(self, cuts: list[int]) -> None:
        self.check(cuts)

    def test_acknowledgedMessagesAreForgotten(self) -> None:
        client, server, _ = exchange([])
        session = client.resumeSession
        assert session is not None
        self.assertEqual((len(session), session.acked, session.received), (0, 5, 5))


class SessionLifecycleTests(ClockTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = RecordingServer(self.clock, [], sessionGrace=30.0)
        self.client = RecordingClient(self.clock)
        self.addCleanup(self.server.forgetSessions)

    def connect(self) -> Link:
        link = Link(self.client, self.server)
        link.pump()
        return link

    def test_resumeWithinGrace(self) -> None:
        link = self.connect()
        first = link.client.session
        assert first is not None
        link.client.sendMessage(b"lost in flight")
        link.client.transport.clear()  # written, never arrives
        link.drop()
        self.clock.advance(29.0)
        link = self.connect()
        self.assertIs(link.client.session, first)
        self.assertEqual(self.server.got, [b"lost in flight"])
        self.assertEqual(self.server.sessionsResumed, 1)
        link.drop()

    def test_graceExpiryIsReportedOnBothSides(self) -> None:
        link = self.connect()
        server = link.server
        server.sendMessage(b"to client, unacknowledged")
        link.st.clear()
        link.client.sendMessage(b"sent, maybe lost")
        link.ct.clear()
        link.drop()
        self.client.sendMessage(b"queued while down")
        self.clock.advance(30.0)
        self.assertEqual(self.server.expired, [1])  # the server's message to it
        self.assertEqual(self.server.sessions, {})
        link = self.connect()
        # The written one may have arrived: reported, not resent.  The queued
        # one never left: it goes out in the new session.
        self.assertEqual(self.client.lost, [[b"sent, maybe lost"]])
        self.assertEqual(self.client.sessionsLost, 1)
        self.assertEqual(self.client.undelivered, 1)
        self.assertEqual(self.server.got, [b"queued while down"])
        link.drop()

    def test_anotherServerLosesTheSession(self) -> None:
        link = self.connect()
        link.client.sendMessage(b"unconfirmed")
        link.ct.clear()
        link.drop()
        other = RecordingServer(self.clock, [])
        self.addCleanup(other.forgetSessions)
        link = Link(self.client, other)
        link.pump()
        self.assertEqual(self.client.lost, [[b"unconfirmed"]])
        self.assertEqual(other.got, [])
        link.drop()

    def test_serverWithoutSessions(self) -> None:
        plain = RecordingServer(self.clock, [], sessionGrace=None)
        self.client.sendMessage(b"queued")
        link = Link(self.client, plain)
        link.pump()
        self.assertIsNone(link.client.session)
        self.assertEqual(plain.got, [b"queued"])  # sent as a plain message
        self.assertEqual(self.client.lost, [[]])  # nothing unconfirmed, but no resume
        link.client.sendMessage(b"later")
        link.pump()
        self.assertEqual(plain.got, [b"queued", b"later"])
        link.drop()

    def test_newConnectionTakesTheSessionOver(self) -> None:
        """
        The client reconnected before the server noticed the old connection
        die: the new one gets the session and the old one is aborted.
        """
        old = self.connect()
        old.client.connectionLost(Failure(ConnectionLost("client side only")))
        link = self.connect()
        self.assertTrue(old.st.disconnecting or old.st.disconnected)
        self.assertIs(self.server.sessionOwner(link.server.session.id), link.server)
        old.server.connectionLost(Failure(ConnectionLost("now")))
        self.assertEqual(self.server._inGrace, {})  # not kept for the dead one
        link.drop()

    def test_ackTimerNotPerMessage(self) -> None:
        link = self.connect()
        calls = []
        original = self.clock.callLater

        def counting(*a: Any, **kw: Any) -> Any:
            calls.append(a[0])
            return original(*a, **kw)

        self.clock.callLater = counting
        for i in range(3):  # fewer than ackEvery: the delay sends the ACK
            link.client.sendMessage(b"m%d" % i)
        link.pump()
        self.assertEqual(calls, [CONFIG.ackDelay])  # one timer for three messages
        session = link.client.session
        assert session is not None
        self.assertEqual(session.acked, 0)
        self.clock.advance(CONFIG.ackDelay)
        link.pump()
        self.assertEqual(session.acked, 3)
        for i in range(8):  # ackEvery (4) sends at once, twice
            link.client.sendMessage(b"n%d" % i)
        link.pump()
        self.assertEqual(session.acked, 11)
        link.drop()


class EngineTests(SynchronousTestCase):
    def openServer(self) -> tuple[KeepaliveConnection, Session]:
        core = KeepaliveConnection(Role.SERVER, CONFIG, 0.0)
        session = Session(b"S" * 16)
        core.sessionFor = lambda requested: (session, False)
        hello = Hello(2, 1.0, 3.0, 1 << 20, session=b"S" * 16, received=0)
        events = core.receive(encodeHello(hello), 0)
        self.assertIsInstance(events[-1], SessionStarted)
        core.dataToSend()
        return core, session

    def test_duplicatesDropped(self) -> None:
        core, session = self.openServer()
        frames = [encodeSequenced(n, b"m%d" % n) for n in (1, 2, 2, 1, 3)]
        self.assertEqual(core.receive(b"".join(frames), 1.0), [b"m1", b"m2", b"m3"])
        self.assertEqual(session.duplicates, 2)
        self.assertEqual(core.messagesIn, 3)

    def test_gapFromPeerOverflowIsCounted(self) -> None:
        core, session = self.openServer()
        core.receive(encodeSequenced(1, b"a") + encodeSequenced(4, b"d"), 1.0)
        self.assertEqual(session.missing, 2)

    def test_ackForUnsentMessageIsAProtocolError(self) -> None:
        core, _ = self.openServer()
        events = core.receive(encodeAck(5), 1.0)
        self.assertIsInstance(events[-1].error, RemoteProtocolError)

    def test_ackRidesOnData(self) -> None:
        core, session = self.openServer()
        core.receive(encodeSequenced(1, b"in"), 1.0)
        frame = core.encodeMessage(b"out", 1.0)
        self.assertEqual(frame, encodeSequenced(1, b"out", 1))
        self.assertEqual(session.pendingAcks, 0)

    def test_sessionLostEvent(self) -> None:
        core = KeepaliveConnection(Role.CLIENT, CONFIG, 0.0)
        session = Session(b"A" * 16)
        session.established = True
        session.store(b"x")
        session.sent = 1
        core.session = session
        core.initiate(0.0)
        # An empty id in the server's HELLO: it started our session afresh.
        hello = Hello(2, 1.0, 3.0, 1 << 20, session=b"", received=0)
        events = core.receive(encodeHello(hello), 0.0)
        lost = [e for e in events if isinstance(e, SessionLost)]
        self.assertEqual([e.undelivered for e in lost], [[b"x"]])
        self.assertEqual((session.id, session.nextSeq), (b"A" * 16, 1))

    def test_serverRejectsShortSessionId(self) -> None:
        core = KeepaliveConnection(Role.SERVER, CONFIG, 0.0)
        core.sessionFor = lambda hello: (Session(hello.session or b""), False)
        hello = Hello(2, 1.0, 3.0, 1 << 20, session=b"", received=0)
        events = core.receive(encodeHello(hello), 0.0)
        self.assertIn("16 bytes", str(events[-1].error))


class OverflowTests(SynchronousTestCase):
    def test_raise(self) -> None:
        client = KeepaliveClientFactory(CONFIG, resume=True, queueSize=2, clock=Clock())
        client.sendMessage(b"1")
        client.sendMessage(b"2")
        self.assertRaises(QueueFull, client.sendMessage, b"3")

    def test_dropNewestIsCounted(self) -> None:
        client = KeepaliveClientFactory(
            CONFIG, resume=True, queueSize=2, overflow=Overflow.DROP_NEWEST, clock=Clock()
        )
        for m in (b"1", b"2", b"3"):
            client.sendMessage(m)
        self.assertEqual(client.dropped, 1)
        assert client.resumeSession is not None
        self.assertEqual([m for _, m in client.resumeSession.unsent()], [b"1", b"2"])

    def test_dropOldestAndBytesBound(self) -> None:
        session = Session(maxMessages=10, maxBytes=10, overflow=Overflow.DROP_OLDEST)
        for m in (b"aaaa", b"bbbb", b"cccc"):
            session.store(m)
        self.assertEqual([m for _, m in session.unsent()], [b"bbbb", b"cccc"])
        self.assertEqual((session.dropped, session.unackedBytes), (1, 8))
        self.assertRaises(QueueFull, session.store, b"x" * 11)


class AcknowledgeCountsTests(SynchronousTestCase):
    """The fast count of acknowledged messages agrees with the slow one."""

    def test_withAndWithoutGaps(self) -> None:
        from twisted_keepalive.errors import MessageTooLarge

        for refused in (None, 3, 1, 6):
            s = Session(b"x" * 16)
            for i in range(6):
                s.store(b"m%d" % i)
            s.sent = 6
            if refused is not None:
                s.refuse(refused, MessageTooLarge(b"", "test"))
            for upTo in (2, 2, 5, 6):
                s.acknowledge(upTo)
                expected = [n for n in range(upTo + 1, 7) if n != refused]
                self.assertEqual([seq for seq, _ in s.stored()], expected, (refused, upTo))
                self.assertEqual(s.unackedBytes, 2 * len(expected))
