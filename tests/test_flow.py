"""
Backpressure and delivery receipts on a fake clock: a producer is paused
instead of messages being dropped, receipts settle exactly once with the
right outcome, sessions end cleanly, and reading can be paused without
the silence counting against the peer.
"""

from __future__ import annotations

from typing import Any

from twisted_keepalive import HeartbeatConfig, HeartbeatTimeout
from twisted_keepalive.client import KeepaliveClientFactory, Overflow, QueueFull
from twisted_keepalive.errors import (
    DeliveryCancelled,
    LocalProtocolError,
    MessageDropped,
    MessageLost,
    MessageTooLarge,
    RemoteProtocolError,
)
from twisted_keepalive.frames import Hello
from twisted_keepalive.stdio import StdinLines, describeNumbers

from .helpers import ClockTestCase, RecordingProducer, makePair
from .test_session import CONFIG, Link, RecordingClient, RecordingServer, settle


class Outcomes:
    """Collects what each receipt settled with."""

    def __init__(self) -> None:
        self.results: dict[bytes, object] = {}

    def watch(self, message: bytes, d: Any) -> None:
        d.addCallbacks(
            lambda seq: self.results.__setitem__(message, seq),
            lambda f: self.results.__setitem__(message, f.value),
        )


class Base(ClockTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = RecordingServer(self.clock, [], sessionGrace=30.0)
        self.addCleanup(self.server.forgetSessions)
        self.outcomes = Outcomes()

    def client(self, **kw: Any) -> RecordingClient:
        return RecordingClient(self.clock, **kw)

    def connect(self, client: Any, server: Any = None) -> Link:
        link = Link(client, server or self.server)
        link.pump()
        return link

    def send(self, client: Any, message: bytes) -> None:
        self.outcomes.watch(message, client.sendConfirmed(message))


class ReceiptTests(Base):
    def test_firesOnlyOnceAcknowledged(self) -> None:
        client = self.client()
        link = self.connect(client)
        self.send(client, b"a")
        link.pump()
        self.assertEqual(self.outcomes.results, {})  # written, arrived, not yet acknowledged
        settle(self.clock, link)
        self.assertEqual(self.outcomes.results, {b"a": 1})
        self.assertEqual(self.server.got, [b"a"])
        link.drop()

    def test_queuedWhileDisconnectedFiresAfterTheHandshake(self) -> None:
        client = self.client()
        self.send(client, b"early")
        link = self.connect(client)
        settle(self.clock, link)
        self.assertEqual(self.outcomes.results, {b"early": 1})
        link.drop()

    def test_survivesAReconnection(self) -> None:
        client = self.client()
        link = self.connect(client)
        self.send(client, b"in flight")
        link.ct.clear()  # written, never arrives
        link.drop()
        self.assertEqual(self.outcomes.results, {})
        link = self.connect(client)
        settle(self.clock, link)
        self.assertEqual(self.outcomes.results, {b"in flight": 1})
        self.assertEqual(self.server.got, [b"in flight"])
        link.drop()

    def test_sessionLossFailsWrittenOnesAndKeepsQueuedOnes(self) -> None:
        client = self.client()
        link = self.connect(client)
        self.send(client, b"written")
        link.ct.clear()
        link.drop()
        self.send(client, b"queued")
        self.clock.advance(30.0)  # the server forgets the session
        link = self.connect(client)
        settle(self.clock, link)
        lost = self.outcomes.results[b"written"]
        assert isinstance(lost, MessageLost)
        self.assertEqual(lost.message, b"written")
        self.assertEqual(self.outcomes.results[b"queued"], 1)  # numbered afresh
        self.assertEqual(self.server.got, [b"queued"])
        link.drop()

    def test_dropNewest(self) -> None:
        client = self.client(queueSize=1, overflow=Overflow.DROP_NEWEST)
        self.send(client, b"kept")
        self.send(client, b"dropped")
        dropped = self.outcomes.results[b"dropped"]
        assert isinstance(dropped, MessageDropped)
        self.assertEqual(dropped.message, b"dropped")
        self.assertNotIn(b"kept", self.outcomes.results)
        client.stopTrying()
        self.assertIsInstance(self.outcomes.results[b"kept"], DeliveryCancelled)

    def test_dropOldest(self) -> None:
        client = self.client(queueSize=1, overflow=Overflow.DROP_OLDEST)
        self.send(client, b"old")
        self.send(client, b"new")
        self.assertIsInstance(self.outcomes.results[b"old"], MessageDropped)
        link = self.connect(client)
        settle(self.clock, link)
        self.assertEqual(self.outcomes.results[b"new"], 2)  # 1 was the dropped one
        self.assertEqual(self.server.got, [b"new"])
        link.drop()

    def test_raiseIsSynchronous(self) -> None:
        client = self.client(queueSize=1)
        self.send(client, b"one")
        self.assertRaises(QueueFull, client.sendConfirmed, b"two")
        client.stopTrying()
        self.assertIsInstance(self.outcomes.results[b"one"], DeliveryCancelled)

    def test_stopCancelsPending(self) -> None:
        client = self.client()
        link = self.connect(client)
        self.send(client, b"unacknowledged")
        client.stopTrying()
        link.pump()
        link.drop()
        cancelled = self.outcomes.results[b"unacknowledged"]
        assert isinstance(cancelled, DeliveryCancelled)
        self.assertEqual(cancelled.message, b"unacknowledged")

    def test_withoutASessionFiresWhenWritten(self) -> None:
        plain = RecordingServer(self.clock, [], sessionGrace=None)
        client = KeepaliveClientFactory(CONFIG, clock=self.clock)
        client.protocol = RecordingClient.protocol
        client.got = []
        self.send(client, b"queued")
        self.assertEqual(self.outcomes.results, {})
        link = self.connect(client, plain)
        self.assertEqual(self.outcomes.results, {b"queued": None})
        self.send(client, b"live")
        self.assertEqual(self.outcomes.results[b"live"], None)
        link.pump()
        self.assertEqual(plain.got, [b"queued", b"live"])
        link.drop()

    def test_tooLargeForAServerWithoutSessionsIsRefusedNotConfirmed(self) -> None:
        plain = RecordingServer(self.clock, [], sessionGrace=None)
        plain.heartbeatConfig = HeartbeatConfig(interval=1.0, timeout=3.0, maxFrame=1024)
        client = self.client()
        for message in (b"a", b"x" * 2000, b"b"):
            self.send(client, message)
        link = self.connect(client, plain)
        self.assertIsInstance(self.outcomes.results[b"x" * 2000], MessageTooLarge)
        self.assertEqual((self.outcomes.results[b"a"], self.outcomes.results[b"b"]), (None, None))
        self.assertEqual(plain.got, [b"a", b"b"])
        self.assertEqual((client.refused, client.dropped), (1, 0))  # counted once
        link.drop()

    def test_tooLargeForTheServerIsRefusedAlone(self) -> None:
        small = RecordingServer(self.clock, [], sessionGrace=30.0)
        small.heartbeatConfig = HeartbeatConfig(
            interval=1.0, timeout=3.0, ackEvery=4, ackDelay=0.05, maxFrame=1024
        )
        self.addCleanup(small.forgetSessions)
        client = self.client()
        for message in (b"a", b"x" * 2000, b"b"):
            self.send(client, message)
        link = self.connect(client, small)
        settle(self.clock, link)
        refused = self.outcomes.results[b"x" * 2000]
        assert isinstance(refused, MessageTooLarge)
        self.assertEqual((self.outcomes.results[b"a"], self.outcomes.results[b"b"]), (1, 3))
        self.assertEqual(small.got, [b"a", b"b"])  # and the session goes on
        self.assertEqual((client.refused, client.dropped), (1, 0))  # counted once
        self.assertTrue(link.up)
        link.drop()


class BackpressureTests(Base):
    def test_pausedAtFullResumedAtHalf(self) -> None:
        client = self.client(queueSize=10)
        producer = RecordingProducer()
        client.registerProducer(producer, True)
        for i in range(10):
            client.sendMessage(b"%d" % i)
        self.assertEqual(producer.calls, ["pause"])
        link = self.connect(client)
        settle(self.clock, link)
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertEqual(len(self.server.got), 10)
        link.drop()

    def test_whatAPausedProducerStillSendsIsKeptUpToTwiceTheBound(self) -> None:
        client = self.client(queueSize=4)
        client.registerProducer(RecordingProducer(), True)
        for i in range(8):
            client.sendMessage(b"%d" % i)  # 4 over the bound: kept, not refused
        self.assertRaises(QueueFull, client.sendMessage, b"9")
        self.assertEqual(client.dropped, 0)
        client.unregisterProducer()
        client.stopTrying()

    def test_plainQueuePausesToo(self) -> None:
        client = KeepaliveClientFactory(CONFIG, queueSize=4, clock=self.clock)
        producer = RecordingProducer()
        client.registerProducer(producer, True)
        for i in range(4):
            client.sendMessage(b"%d" % i)
        self.assertTrue(producer.paused)
        link = self.connect(client)
        self.assertEqual(producer.calls, ["pause", "resume"])
        link.drop()

    def test_aFullTransportPausesTheFactorysProducer(self) -> None:
        client = self.client()
        link = self.connect(client)
        producer = RecordingProducer()
        client.registerProducer(producer, True)
        link.client.pauseProducing()  # the transport's buffer is full
        self.assertEqual(producer.calls, ["pause"])
        link.client.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        link.drop()

    def test_unacknowledgedSessionPausesAServerSideProducer(self) -> None:
        self.server.sessionBuffer = 4
        client = self.client()
        link = self.connect(client)
        producer = RecordingProducer()
        link.server.registerProducer(producer, True)
        for i in range(4):
            link.server.sendMessage(b"%d" % i)
        self.assertEqual(producer.calls, ["pause"])  # nothing acknowledged yet
        link.pump()
        settle(self.clock, link)
        self.assertEqual(producer.calls, ["pause", "resume"])
        link.drop()

    def test_broadcastIsolatesARecipientThatDoesNotAcknowledge(self) -> None:
        """
        A client's message is broadcast from inside its own dataReceived;
        one recipient never acknowledges.  It alone is closed
        (SLOW_CONSUMER); the sender and the others are untouched.
        """

        class Relay(RecordingServer):
            def messageReceived(self, protocol: Any, message: bytes) -> None:
                self.broadcast(message, where=lambda p: p is not protocol)

        relay = Relay(self.clock, [], sessionGrace=30.0, sessionBuffer=3)
        self.addCleanup(relay.forgetSessions)
        good, stuck, sender = self.client(), self.client(), self.client()
        goodLink, stuckLink = self.connect(good, relay), self.connect(stuck, relay)
        senderLink = self.connect(sender, relay)
        for i in range(5):
            sender.sendMessage(b"%d" % i)
            senderLink.pump()  # the stuck link is never pumped: no ACK from it
            goodLink.pump()
            settle(self.clock, goodLink)
            settle(self.clock, senderLink)
        self.assertEqual(good.got, [b"%d" % i for i in range(5)])
        self.assertEqual(relay.slowConsumers, 1)
        self.assertFalse(stuckLink.server.isOpen)
        self.assertTrue(senderLink.server.isOpen and goodLink.server.isOpen)
        session = sender.resumeSession
        assert session is not None
        self.assertEqual(len(session), 0)  # all acknowledged, none refused
        for link in (goodLink, stuckLink, senderLink):
            link.drop()


class SessionEndTests(Base):
    def test_unknownSessionWithReceivedIsANewSession(self) -> None:
        """
        A HELLO naming a session this server never had, with received > 0,
        starts a new one (it used to be closed with PROTOCOL_ERROR, and the
        client reconnected forever).
        """
        client = self.client()
        link = self.connect(client)
        link.server.sendMessage(b"to client")
        settle(self.clock, link)
        self.assertEqual(client.resumeSession.received, 1)
        link.drop()
        other = RecordingServer(self.clock, [])
        self.addCleanup(other.forgetSessions)
        link = self.connect(client, other)
        self.assertTrue(link.up and link.client.isOpen)
        self.assertEqual(client.sessionsLost, 1)
        self.assertEqual(len(other.sessions), 1)
        client.sendMessage(b"after")
        link.pump()
        self.assertEqual(other.got, [b"after"])
        link.drop()

    def test_refusedResumeChangesNothing(self) -> None:
        client = self.client()
        link = self.connect(client)
        session = link.server.session
        assert session is not None
        owner = link.server
        liar = Hello(2, 1.0, 3.0, 1 << 20, session=session.id, received=99)
        self.assertRaises(RemoteProtocolError, self.server.heartbeatSessionFor, owner, liar)
        self.assertTrue(owner.isOpen)
        self.assertIs(self.server.sessionOwner(session.id), owner)
        self.assertEqual(self.server.sessionsResumed, 0)
        link.drop()


class ReadingPauseTests(ClockTestCase):
    def test_onlyOnceOpen(self) -> None:
        """
        Before the handshake there is no timeout to suspend: pausing then
        would restore "no timeout" afterwards and never detect a dead peer.
        """
        client, server, pair = makePair(self.clock, connect=False)
        self.assertRaises(LocalProtocolError, client.pauseReading)
        pair.connect()
        client.close()
        pair.pump()

    def test_pausedReadingIsNotThePeersSilence(self) -> None:
        client, server, pair = makePair(self.clock)  # client timeout 3 s
        client.pauseReading()
        pair.serverToClient = False  # nothing reaches it: as if unread
        pair.advance(10, step=0.5)
        self.assertTrue(client.isOpen)
        pair.serverToClient = True
        client.resumeReading()
        pair.serverToClient = False  # now the silence is the peer's
        pair.advance(3.5, step=0.25)
        self.assertIsInstance(client.closed[-1], HeartbeatTimeout)

    def test_pongsForPingsTheCapForgotAreAccepted(self) -> None:
        """
        Reading paused for 80 intervals: 80 PINGs went out but only 64 are
        remembered; when the PONGs are read at last, the 16 extra ones are
        accepted, not taken for a protocol violation.
        """
        client, server, pair = makePair(self.clock)
        client.pauseReading()
        held = []
        for _ in range(160):  # 80 s at interval 1: the server's PONGs are held back
            self.clock.advance(0.5)
            server.dataReceived(pair.clientTransport.value())
            pair.clientTransport.clear()
            held.append(pair.serverTransport.value())
            pair.serverTransport.clear()
        self.assertEqual(client.stats.pingsSent, 80)
        client.resumeReading()
        client.dataReceived(b"".join(held))
        self.assertTrue(client.isOpen)
        self.assertEqual(client.stats.pongsReceived, 64)
        pair.clientTransport.loseConnection()
        pair.pump()


class StdinLinesTests(ClockTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.got: list[tuple[int, Any]] = []
        self.ended = 0
        self.reader = StdinLines(
            lambda n, line: self.got.append((n, line)),
            lambda n, size: self.got.append((n, size)),
            self.end,
            maxLine=10,
        )

    def end(self) -> None:
        self.ended += 1

    def test_linesAcrossReadsOverlongAloneLastWithoutNewline(self) -> None:
        r = self.reader
        r.dataReceived(b"one\r\ntw")
        r.dataReceived(b"o\n" + b"x" * 7)
        r.dataReceived(b"y" * 7 + b"\nthree\nfour")
        r.readConnectionLost()
        self.assertEqual(self.got, [(1, b"one"), (2, b"two"), (3, 14), (4, b"three"), (5, b"four")])
        self.assertEqual(self.ended, 1)

    def test_pauseHoldsLinesAndEnd(self) -> None:
        r = self.reader
        r.pauseProducing()
        r.dataReceived(b"a\nb\n")
        r.readConnectionLost()
        self.assertEqual((self.got, self.ended), ([], 0))
        r.resumeProducing()
        self.assertEqual((self.got, self.ended), ([(1, b"a"), (2, b"b")], 1))

    def test_pausedByItsConsumerMidRead(self) -> None:
        r = self.reader

        def onLine(n: int, line: bytes) -> None:
            self.got.append((n, line))
            r.pauseProducing()

        r.onLine = onLine
        r.dataReceived(b"a\nb\nc\n")
        self.assertEqual(self.got, [(1, b"a")])
        r.resumeProducing()
        self.assertEqual(self.got, [(1, b"a"), (2, b"b")])

    def test_describeNumbers(self) -> None:
        self.assertEqual(describeNumbers([1, 2, 3, 7, 9, 10]), "1-3, 7, 9-10")
        self.assertEqual(
            describeNumbers(list(range(0, 40, 2)), most=2), "0, 2, ... (18 more ranges)"
        )
