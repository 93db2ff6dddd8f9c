"""
Hostile peers on a fake clock: each test is an attack from issue #13, made
with raw frames against a L{KeepaliveServerFactory} (or a hostile server
against a client), and asserts the bound that holds.  The same attacks
against a live C{twistd keepconn} are in test_hostile_e2e.py.
"""

from __future__ import annotations

import os
import tracemalloc
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_keepalive import CloseCode, HeartbeatConfig, HeartbeatProtocol, Role
from twisted_keepalive.errors import HeartbeatTimeout
from twisted_keepalive.frames import (
    HANDSHAKE_MAX_FRAME,
    Close,
    FrameDecoder,
    Hello,
    encodeAck,
    encodeClose,
    encodeData,
    encodeFrame,
    encodeHello,
    encodePong,
    parseFrame,
    parseSequenced,
)
from twisted_keepalive.server import DisconnectReason, KeepaliveServerFactory, ServerProtocol
from twisted_keepalive.session import Session

from .helpers import ClockTestCase, Recorder, capturingLogger

SERVER = HeartbeatConfig(interval=2.0, timeout=5.0, handshakeTimeout=3.0)


def frames(data: bytes) -> list[Any]:
    decoder = FrameDecoder()
    return [parseFrame(t, f, p) for t, f, p in decoder.feed(data)]


def sequenced(data: bytes) -> list[tuple[int, bytes]]:
    """(seq, message) of every sequenced DATA frame in C{data}."""
    decoder = FrameDecoder()
    out = []
    for ftype, flags, payload in decoder.feed(data):
        if ftype == 4 and flags & 1:
            seq, _, message = parseSequenced(flags, payload)
            out.append((seq, message))
    return out


class Server(KeepaliveServerFactory):
    protocol = ServerProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expired: list[Session] = []
        self.left: list[DisconnectReason] = []

    def sessionExpired(self, session: Session) -> None:
        self.expired.append(session)

    def clientDisconnected(self, protocol: HeartbeatProtocol, reason: DisconnectReason) -> None:
        self.left.append(reason)


class HostileTestCase(ClockTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.peers: list[tuple[Any, StringTransport]] = []
        self.addCleanup(self.closeAll)

    def closeAll(self) -> None:
        for protocol, transport in self.peers:
            if protocol.closeReason is None:
                transport.clear()
                protocol.connectionLost(Failure(ConnectionDone()))
        for factory in getattr(self, "factories", []):
            factory.forgetSessions()
            if factory._sweeper is not None:
                factory._sweeper.stop()

    def factory(self, **kwargs: Any) -> Server:
        kwargs.setdefault("clock", self.clock)
        factory = Server(kwargs.pop("config", SERVER), **kwargs)
        self.factories = [*getattr(self, "factories", []), factory]
        return factory

    def raw(
        self,
        factory: KeepaliveServerFactory,
        hello: Hello | None = None,
        host: str = "127.0.0.1",
        port: int = 40000,
    ) -> tuple[Any, StringTransport]:
        """
        A connection driven by raw bytes from the test; C{hello} is sent at
        once if given.
        """
        addr = IPv4Address("TCP", host, port + len(self.peers))
        protocol = factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        protocol.makeConnection(transport)
        self.peers.append((protocol, transport))
        if hello is not None:
            protocol.dataReceived(encodeHello(hello))
        return protocol, transport

    def drop(self, protocol: Any) -> None:
        protocol.transport.clear()
        protocol.connectionLost(Failure(ConnectionDone()))


def sessionHello(sid: bytes, received: int = 0, clientId: str | None = "victim") -> Hello:
    return Hello(2, 2.0, 6.0, 1 << 20, clientId, None, sid, received)


class SessionOwnerTests(HostileTestCase):
    """
    A session resumes only for the client that owns it.
    """

    def test_resumeByAnotherIdentityChangesNothing(self) -> None:
        factory = self.factory()
        sid = os.urandom(16)
        owner, ot = self.raw(factory, sessionHello(sid))
        self.assertTrue(owner.isOpen)
        for i in range(3):
            factory.push(owner, b"secret %d" % i)
        session = owner.session
        ot.clear()
        # Another client (same shared token, another id) names the session
        # and acknowledges everything, to steal or to erase it.
        thief, tt = self.raw(factory, sessionHello(sid, received=3, clientId="mallory"))
        self.assertFalse(thief.isOpen)
        reply = frames(tt.value())
        self.assertEqual(reply[0].code, CloseCode.AUTH_FAILED)
        self.assertNotIn(b"secret", tt.value())
        # The owner saw nothing: open, same session, nothing acknowledged.
        self.assertTrue(owner.isOpen)
        self.assertIs(owner.session, session)
        self.assertEqual((len(session), session.acked), (3, 0))
        self.assertEqual(ot.value(), b"")
        self.assertEqual(factory.resumesRefused, 1)
        self.assertIs(factory.sessionOwner(sid), owner)

    def test_noClientIdIsAnIdentityToo(self) -> None:
        factory = self.factory()
        sid = os.urandom(16)
        owner, _ = self.raw(factory, sessionHello(sid, clientId=None))
        factory.push(owner, b"x")
        self.drop(owner)
        thief, tt = self.raw(factory, sessionHello(sid, clientId="someone"))
        self.assertFalse(thief.isOpen)
        self.assertEqual(frames(tt.value())[0].code, CloseCode.AUTH_FAILED)
        # The owner itself still resumes and gets what it missed.
        back, bt = self.raw(factory, sessionHello(sid, clientId=None))
        self.assertTrue(back.isOpen)
        self.assertEqual(sequenced(bt.value()), [(1, b"x")])

    def test_ownerResumesWithinGrace(self) -> None:
        factory = self.factory()
        sid = os.urandom(16)
        owner, _ = self.raw(factory, sessionHello(sid))
        factory.push(owner, b"one")
        factory.push(owner, b"two")
        self.drop(owner)
        self.clock.advance(30.0)
        back, bt = self.raw(factory, sessionHello(sid, received=0))
        self.assertEqual(sequenced(bt.value()), [(1, b"one"), (2, b"two")])
        self.assertEqual(factory.sessionsResumed, 1)

    def test_lyingAcknowledgementRefused(self) -> None:
        factory = self.factory()
        sid = os.urandom(16)
        owner, _ = self.raw(factory, sessionHello(sid))
        factory.push(owner, b"one")
        liar, lt = self.raw(factory, sessionHello(sid, received=5))
        self.assertFalse(liar.isOpen)
        self.assertEqual(frames(lt.value())[0].code, CloseCode.PROTOCOL_ERROR)
        self.assertTrue(owner.isOpen)
        self.assertEqual(len(owner.session), 1)

    def test_idsNeverLoggedInFull(self) -> None:
        events: list[dict[str, Any]] = []
        factory = self.factory(sessionGrace=1.0)
        factory.log = capturingLogger(events)
        self.patch(HeartbeatProtocol, "log", capturingLogger(events))
        sid = bytes(range(16))
        owner, _ = self.raw(factory, sessionHello(sid))
        factory.push(owner, b"x")
        self.drop(owner)
        self.raw(factory, sessionHello(sid, clientId="mallory"))
        self.clock.advance(1.0)
        text = " ".join(str(sorted(e.items())) for e in events)
        self.assertIn("00010203...", text)
        self.assertNotIn(sid.hex(), text)
        self.assertNotIn(sid.hex()[:10], text)


class SessionStateTests(HostileTestCase):
    """
    No state before a HELLO is valid; every session has a deadline.
    """

    def test_unknownIdsWithReceivedAllExpire(self) -> None:
        # Before: 10,000 such HELLOs left 10,000 sessions that never expired.
        factory = self.factory(sessionGrace=5.0)
        for i in range(200):
            protocol, _ = self.raw(factory, sessionHello(os.urandom(16), received=1000 + i))
            self.assertTrue(protocol.isOpen)
            self.assertEqual(protocol.session.received, 0)  # a new session starts from 0
            self.drop(protocol)
        self.assertEqual(len(factory.sessions), 200)
        self.clock.advance(5.0)
        self.assertEqual(factory.sessions, {})
        self.assertEqual(factory.sessionsExpired, 200)

    def test_refusedHelloLeavesNoSession(self) -> None:
        factory = self.factory(config=HeartbeatConfig(interval=2.0, timeout=5.0, token=b"right"))
        for token in (None, b"wrong"):
            hello = Hello(2, 2.0, 6.0, 1 << 20, "c", token, os.urandom(16), 0)
            protocol, t = self.raw(factory, hello)
            self.assertEqual(frames(t.value())[0].code, CloseCode.AUTH_FAILED)
        self.assertEqual(factory.sessions, {})


class SessionLimitTests(HostileTestCase):
    def test_oldestInGraceForgottenAtMaxSessions(self) -> None:
        factory = self.factory(maxSessions=3)
        sids = [os.urandom(16) for _ in range(4)]
        for sid in sids[:3]:
            p, _ = self.raw(factory, sessionHello(sid))
            factory.push(p, b"undelivered")
            self.drop(p)
            self.clock.advance(1.0)
        newest, _ = self.raw(factory, sessionHello(sids[3]))
        self.assertTrue(newest.isOpen)
        self.assertEqual([s.id for s in factory.expired], [sids[0]])  # reported
        self.assertEqual(factory.sessionsEvicted, 1)
        self.assertEqual(set(factory.sessions), set(sids[1:]))

    def test_newSessionRefusedWhenAllAreLive(self) -> None:
        factory = self.factory(maxSessions=2, fullRetryAfter=5.0)
        for _ in range(2):
            self.raw(factory, sessionHello(os.urandom(16)))
        late, t = self.raw(factory, sessionHello(os.urandom(16)))
        self.assertFalse(late.isOpen)
        (close,) = frames(t.value())
        self.assertEqual(close.code, CloseCode.TOO_MANY_CONNECTIONS)
        self.assertTrue(5.0 <= close.retryAfter <= 10.0)
        self.assertEqual(factory.sessionsRefused, 1)
        self.assertEqual(len(factory.sessions), 2)


class MemoryBudgetTests(HostileTestCase):
    """
    Many clients, each within its own bounds, cannot together pass the
    server's budget.
    """

    LIMIT = 1 << 20
    MESSAGE = b"m" * 10_000

    def test_sessionsInGraceForgottenOldestFirst(self) -> None:
        # Before: 40 sessions dropped with full buffers took 663 MiB.
        factory = self.factory(memoryBudget=self.LIMIT)
        budget = factory.memoryBudget
        for i in range(40):
            p, _ = self.raw(factory, sessionHello(os.urandom(16), clientId=f"c{i}"))
            while factory.push(p, self.MESSAGE):
                self.assertLessEqual(budget.used, budget.limit)
            self.drop(p)
        self.assertLessEqual(budget.used, budget.limit)
        self.assertGreater(factory.sessionsEvicted, 30)
        self.assertEqual(len(factory.expired), factory.sessionsEvicted)
        # Everything is given back when the sessions go.
        factory.forgetSessions()
        self.assertEqual(budget.used, 0)

    def test_healthyClientServedWhileHogsAreRefused(self) -> None:
        factory = self.factory(memoryBudget=self.LIMIT)
        budget = factory.memoryBudget
        hogs = [
            self.raw(factory, sessionHello(os.urandom(16), clientId=f"hog{i}"))[0] for i in range(4)
        ]
        good, gt = self.raw(factory, sessionHello(os.urandom(16), clientId="good"))
        delivered = 0
        for _ in range(400):
            factory.broadcast(self.MESSAGE)
            got = sequenced(gt.value())
            gt.clear()
            if got:
                delivered += len(got)
                good.dataReceived(encodeAck(got[-1][0]))  # it acknowledges
            self.assertLessEqual(budget.used, budget.limit + len(hogs) * len(self.MESSAGE))
        self.assertEqual(delivered, 400)
        self.assertTrue(good.isOpen)
        self.assertTrue(all(not h.isOpen for h in hogs))
        self.assertEqual(factory.slowConsumers, 4)

    def test_unreadOutputDroppedAtTheBudget(self) -> None:
        # Before: broadcast into 100 clients that never read, 5 MiB in ->
        # +303 MiB held.
        factory = self.factory(memoryBudget=self.LIMIT, sessionGrace=None)
        budget = factory.memoryBudget
        readers = [self.raw(factory, Hello(1, 2.0, 6.0, 1 << 20, f"r{i}"))[0] for i in range(20)]
        for r in readers:
            r.pauseProducing()  # the transport says: buffer full, peer not reading
        good, gt = self.raw(factory, Hello(1, 2.0, 6.0, 1 << 20, "good"))
        for _ in range(200):
            factory.broadcast(self.MESSAGE)
            gt.clear()
            self.assertLessEqual(budget.used, budget.limit)
        self.assertTrue(good.isOpen)
        self.assertTrue(all(not r.isOpen for r in readers))
        for r in readers:
            self.assertEqual(r.closeReason, None)  # aborted; connectionLost follows
            self.drop(r)
        self.assertEqual(budget.used, 0)


class AdmissionTests(HostileTestCase):
    def test_silentSocketsGiveWayToNewcomers(self) -> None:
        factory = self.factory(maxHandshaking=3, maxConnections=2)
        silent = [self.raw(factory)[0] for _ in range(3)]
        client, t = self.raw(factory)  # crowds out the oldest silent one
        self.assertTrue(silent[0].transport.disconnected)
        self.drop(silent[0])
        self.assertEqual(factory.left, [DisconnectReason.CROWDED])
        client.dataReceived(encodeHello(Hello(2, 2.0, 6.0, 1 << 20, "real")))
        self.assertTrue(client.isOpen)
        self.assertEqual((factory.established, len(factory._handshaking)), (1, 2))
        self.assertEqual(factory.crowdedOut, 1)

    def test_connectionLimitCountsClientsNotHandshakes(self) -> None:
        factory = self.factory(maxHandshaking=100, maxConnections=1)
        for _ in range(50):
            self.raw(factory)  # silent
        first, _ = self.raw(factory, Hello(2, 2.0, 6.0, 1 << 20, "a"))
        self.assertTrue(first.isOpen)
        second, t = self.raw(factory, Hello(2, 2.0, 6.0, 1 << 20, "b"))
        self.assertFalse(second.isOpen)
        self.assertEqual(frames(t.value())[-1].code, CloseCode.TOO_MANY_CONNECTIONS)


class PeerLogTests(HostileTestCase):
    def test_oneLinePerHostAndKindPerPeriod(self) -> None:
        events: list[dict[str, Any]] = []
        self.patch(HeartbeatProtocol, "log", capturingLogger(events))
        factory = self.factory(logPeriod=10.0)
        for _ in range(500):
            p, _ = self.raw(factory)
            p.dataReceived(b"\x00\x00\x00\x02\x7f\x00")  # an unknown critical type
            self.drop(p)
        errors = [e for e in events if "Protocol error" in e["log_format"]]
        self.assertEqual(len(errors), 1)
        self.clock.advance(10.0)
        p, _ = self.raw(factory)
        p.dataReceived(b"\x00\x00\x00\x02\x7f\x00")
        errors = [e for e in events if "Protocol error" in e["log_format"]]
        self.assertEqual(len(errors), 2)
        self.assertEqual(errors[1]["suppressed"], 499)
        # Another host gets its own line.
        p, _ = self.raw(factory, host="10.0.0.9")
        p.dataReceived(b"\x00\x00\x00\x02\x7f\x00")
        self.assertEqual(len([e for e in events if "Protocol error" in e["log_format"]]), 3)

    def test_peerTextTruncated(self) -> None:
        events: list[dict[str, Any]] = []
        self.patch(HeartbeatProtocol, "log", capturingLogger(events))
        factory = self.factory()
        p, _ = self.raw(factory, Hello(2, 2.0, 6.0, 1 << 20, "c"))
        p.dataReceived(encodeClose(CloseCode.NORMAL, "\x1b[31m" + "A" * 1000 + "\n"))
        (line,) = [e for e in events if "closed the connection" in e["log_format"]]
        text = str(line["reason"])
        self.assertLess(len(text), 250)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\n", text)


class ClientTests(HostileTestCase):
    """
    What a hostile server can do to a client.
    """

    def client(self, **kwargs: Any) -> tuple[Recorder, StringTransport]:
        config = HeartbeatConfig(interval=1.0, timeout=3.0, **kwargs)
        client = Recorder(config, role=Role.CLIENT, clock=self.clock)
        transport = StringTransport()
        client.makeConnection(transport)
        return client, transport

    def test_requirePongs(self) -> None:
        # A wedged server whose socket still trickles (extension frames,
        # its own pings answered by the kernel's buffer...) is alive to a
        # client that counts bytes, dead to one that requires PONGs.
        for require, dead in ((False, False), (True, True)):
            c, t = self.client(requirePongs=require)
            c.dataReceived(encodeHello(Hello(2, 1.0, 3.0, 1 << 20)))
            for _ in range(40):
                self.clock.advance(0.25)
                c.dataReceived(encodeFrame(parseFrame(0x90, 0, b"noise")))
            self.assertEqual(not c.isOpen, dead)
            if dead:
                c.connectionLost(Failure(ConnectionDone()))
                self.assertIsInstance(c.closeReason.value, HeartbeatTimeout)
            else:
                c.close()
                c.connectionLost(Failure(ConnectionDone()))

    def test_requirePongsPingsEvenOnABusyLink(self) -> None:
        c, t = self.client(requirePongs=True)
        c.dataReceived(encodeHello(Hello(2, 1.0, 3.0, 1 << 20)))
        t.clear()
        for _ in range(8):  # both directions busy: a byte-counting client would not ping
            self.clock.advance(0.5)
            c.sendMessage(b"busy")
            c.dataReceived(encodeData(b"busy"))
            for frame in frames(t.value()):
                if type(frame).__name__ == "Ping":
                    c.dataReceived(encodePong(frame.id, frame.timestamp))
            t.clear()
        self.assertTrue(c.isOpen)
        self.assertEqual(c.core.pingsSent, 4)
        c.close()
        c.connectionLost(Failure(ConnectionDone()))

    def test_closeReasonIsNotAnInjection(self) -> None:
        c, t = self.client()
        c.dataReceived(encodeHello(Hello(2, 1.0, 3.0, 1 << 20)))
        c.dataReceived(encodeFrame(Close(CloseCode.NORMAL, "x" * 1024)))
        c.connectionLost(Failure(ConnectionDone()))
        self.assertLess(len(str(c.closeReason.value)), 250)


class DecoderBoundTests(ClockTestCase):
    def test_trickledHandshakeHeldNearWhatWasSent(self) -> None:
        # Before: 1-byte segments held 292 KiB per unauthenticated peer.
        decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        frame = HANDSHAKE_MAX_FRAME.to_bytes(4, "big") + bytes(HANDSHAKE_MAX_FRAME)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(len(frame) - 1):
                for _ in decoder.feed(frame[i : i + 1]):
                    pass
                held = tracemalloc.get_traced_memory()[0] - base
                # Within the handshake's 4 KiB frame (allocated at once
                # for a frame that small) plus a fixed overhead.
                self.assertLessEqual(held, HANDSHAKE_MAX_FRAME + 2048, i)
        finally:
            tracemalloc.stop()
        ((ftype, flags, payload),) = list(decoder.feed(frame[-1:]))
        self.assertEqual(len(payload), HANDSHAKE_MAX_FRAME - 2)

    def test_largeTrickledFrameHeldWithinTwiceWhatWasSent(self) -> None:
        decoder = FrameDecoder(1 << 20)
        frame = encodeData(os.urandom(200_000))
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(0, len(frame) - 7, 7):
                for _ in decoder.feed(frame[i : i + 7]):
                    pass
                if i % 7000 == 0:
                    held = tracemalloc.get_traced_memory()[0] - base
                    self.assertLessEqual(held, 2 * (i + 7) + 8192, i)
        finally:
            tracemalloc.stop()

    def test_shortLengthRefusedAtOnce(self) -> None:
        from twisted_keepalive.errors import RemoteProtocolError

        for data in (b"\x00\x00\x00\x00", b"\x00\x00\x00\x01\x04"):
            with self.assertRaises(RemoteProtocolError):
                list(FrameDecoder().feed(data))
        decoder = FrameDecoder()
        self.assertEqual(list(decoder.feed(b"\x00\x00\x00")), [])
        with self.assertRaises(RemoteProtocolError):
            list(decoder.feed(b"\x01"))
