"""
`twistd -n keepconn --stdio` as a pipe you can trust, end to end with real
processes on 127.0.0.1 (pytest only): nothing dropped for lack of room,
sessions that end cleanly, bounded memory whatever the reader does, and an
exit status that says what happened.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol
from twisted_keepalive.client import KeepaliveClientFactory
from twisted_keepalive.frames import Hello, encodeHello, encodePing
from twisted_keepalive.stdio import EXIT_GAVE_UP, EXIT_LOST, EXIT_REFUSED
from twisted_keepalive.testing import FaultProxy

from .e2e import FAST_CLIENT, Processes, clientIs, freePort, listening, rss, server, status, waitFor


def lines(start: int, stop: int) -> list[str]:
    return [f"line {i}" for i in range(start, stop)]


def feed(process: Any, text: list[str]) -> None:
    process.transport.write("".join(t + "\n" for t in text).encode())


def pipeClient(procs: Processes, port: int, *extra: str, name: str = "client") -> Any:
    return procs.start(
        name, "--host", f"127.0.0.1:{port}", "--stdio", *FAST_CLIENT, *extra, logfile=True
    )


@pytest_twisted.inlineCallbacks
def test_fiftyThousandLinesAllBackInOrder() -> Any:
    """
    The issue's first reproduction: 14,360 of 50,000 lines used to be
    dropped with "retransmit buffer is full".  Standard input is now paused
    instead.
    """
    procs = Processes()
    try:
        port, sStatus = freePort(), freePort()
        server(procs, "server", port, sStatus)
        yield waitFor(listening(sStatus), 20, "the server")
        cli = pipeClient(procs, port)
        sent = lines(0, 50_000)
        feed(cli, sent)
        cli.transport.closeStdin()
        code = yield cli.ended
        assert code == 0, procs.log("client")[-3000:]
        assert cli.out.decode().splitlines() == sent
        assert "not sent" not in procs.log("client")
    finally:
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_burstsWithAResetAfterEachExactlyOnceInOrder() -> Any:
    """
    20,000 lines in bursts of 2,000 (twice the client's buffer), the
    connection reset after each burst: every line back once, in order.
    """
    procs = Processes()
    proxy = None
    try:
        port, sStatus = freePort(), freePort()
        server(procs, "server", port, sStatus)
        yield waitFor(listening(sStatus), 20, "the server")
        proxy = FaultProxy("127.0.0.1", port)
        cli = pipeClient(procs, proxy.listen())
        sent = lines(0, 20_000)
        resets = 0
        for start in range(0, len(sent), 2_000):
            feed(cli, sent[start : start + 2_000])
            yield deferLater(reactor, 0.2, lambda: None)
            if proxy.accepted:
                proxy.reset()
                resets += 1
        cli.transport.closeStdin()
        code = yield cli.ended
        log = procs.log("client")
        assert code == 0, log[-3000:]
        assert resets >= 5, resets
        assert cli.out.decode().splitlines() == sent
        assert "Session resumed" in log, log[-3000:]
        assert "Session lost" not in log and "not sent" not in log
    finally:
        if proxy is not None:
            yield proxy.stop()
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_linesPipedWhileTheServerIsDownAllArrive() -> Any:
    """
    3,000 lines (three times the buffer) before any server exists; the
    server starts 5 s later: all of them back, exit 0.
    """
    procs = Processes()
    try:
        port, sStatus = freePort(), freePort()
        cli = pipeClient(procs, port)
        sent = lines(0, 3_000)
        feed(cli, sent)
        cli.transport.closeStdin()
        yield deferLater(reactor, 5, lambda: None)
        assert cli.running
        server(procs, "server", port, sStatus)
        code = yield cli.ended
        assert code == 0, procs.log("client")[-3000:]
        assert cli.out.decode().splitlines() == sent
    finally:
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_dropLongerThanTheGraceStartsANewSessionAndSaysSo() -> Any:
    """
    The server forgets the session while the path is blackholed; the
    client's HELLO then names an unknown session with received > 0.  It
    used to be refused (CLOSE 1002) forever; now the client goes on in a new
    session at once, every later line arrives, each line of the dark period
    either came back or is reported, and the exit status is EXIT_LOST.
    """
    procs = Processes()
    proxy = None
    try:
        port, sStatus = freePort(), freePort()
        server(procs, "server", port, sStatus, "--session-grace", "0.5")
        yield waitFor(listening(sStatus), 20, "the server")
        proxy = FaultProxy("127.0.0.1", port)
        cli = pipeClient(procs, proxy.listen())
        feed(cli, lines(0, 100))
        yield waitFor(lambda: _now(len(cli.out.splitlines()) == 100), 10, "the first lines")
        proxy.blackhole()
        feed(cli, lines(100, 200))  # some written into the dark, some stored
        # The server evicts after its idle timeout (3 s), then forgets the
        # session 0.5 s later.
        yield waitFor(lambda: _sessions(sStatus, 0), 10, "the server to forget the session")
        proxy.restore()
        yield waitFor(lambda: _now("Session lost" in procs.log("client")), 10, "the loss")
        feed(cli, lines(200, 300))
        cli.transport.closeStdin()
        code = yield cli.ended
        log = procs.log("client")
        assert code == EXIT_LOST, log[-3000:]
        got = cli.out.decode().splitlines()
        assert len(got) == len(set(got)), "a line came back twice"
        assert got[:100] == lines(0, 100)
        assert got[-100:] == lines(200, 300), "every line after the loss, in order"
        reported = _reportedLost(log)
        for number, line in enumerate(lines(100, 200), start=101):
            assert line in got or number in reported, (line, reported)
        assert "PROTOCOL_ERROR" not in log
        assert log.count("Connected to") <= 3, log[-3000:]  # no reconnect loop
    finally:
        if proxy is not None:
            yield proxy.stop()
        yield procs.cleanup()


def _now(value: bool) -> Deferred[bool]:
    d: Deferred[bool] = Deferred()
    d.callback(value)
    return d


@pytest_twisted.inlineCallbacks
def _sessions(statusPort: int, count: int) -> Any:
    s = yield status(statusPort)
    return s["sessions"] == count and s["sessions_expired"] >= 1


def _reportedLost(log: str) -> set[int]:
    numbers: set[int] = set()
    for match in re.finditer(r"lines may not have arrived \(session lost\): ([0-9, -]+)", log):
        for part in match.group(1).split(","):
            first, _, last = part.strip().partition("-")
            numbers.update(range(int(first), int(last or first) + 1))
    return numbers


@pytest_twisted.inlineCallbacks
def test_unreadStandardOutputKeepsMemoryBounded() -> Any:
    """
    Nobody reads the client's standard output while the echo server keeps
    sending: the client stops reading the connection instead of buffering
    (it used to reach 1.5 GB in 6 s), and stays connected meanwhile.
    """
    procs = Processes()
    readEnd, writeEnd = os.pipe()
    try:
        port, sStatus, cStatus = freePort(), freePort(), freePort()
        server(procs, "server", port, sStatus)
        yield waitFor(listening(sStatus), 20, "the server")
        cli = procs.start(
            "client",
            *("--host", f"127.0.0.1:{port}", "--stdio", *FAST_CLIENT),
            *("--status", f"tcp:{cStatus}:interface=127.0.0.1"),
            logfile=True,
            childFDs={0: "w", 1: writeEnd, 2: "r"},
        )
        os.close(writeEnd)
        writeEnd = -1
        feed(cli, [f"{i:08d} " + "x" * 90 for i in range(200_000)])  # 20 MB
        yield waitFor(clientIs(cStatus, "connected"), 20, "the client")
        peak = 0
        for _ in range(20):  # 5 s, four times the client's dead-peer timeout
            yield deferLater(reactor, 0.25, lambda: None)
            peak = max(peak, rss(cli))
        s = yield status(cStatus)
        assert peak < 100 << 20, peak
        assert s["state"] == "connected" and s["heartbeat_timeouts"] == 0, s
    finally:
        os.close(readEnd)
        if writeEnd >= 0:
            os.close(writeEnd)
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_overlongLineQueuedBeforeConnectingIsRefusedAlone() -> Any:
    """
    A line longer than the server's frame limit, read before the limit is
    known, used to wedge the session (FRAME_TOO_LARGE forever).  It is
    refused with one line naming it; the others arrive; exit EXIT_REFUSED.
    """
    procs = Processes()
    try:
        port, sStatus = freePort(), freePort()
        cli = pipeClient(procs, port)
        sent = lines(0, 10)
        sent[3] = "y" * 5000
        feed(cli, sent)
        cli.transport.closeStdin()
        yield deferLater(reactor, 0.5, lambda: None)
        server(procs, "server", port, sStatus, "--max-frame", "1024")
        code = yield cli.ended
        log = procs.log("client")
        assert code == EXIT_REFUSED, log[-3000:]
        assert cli.out.decode().splitlines() == sent[:3] + sent[4:]
        (line,) = [x for x in log.splitlines() if "not sent" in x]
        assert "Line 4 (5000 bytes) not sent" in line
        assert "FRAME_TOO_LARGE" not in log
    finally:
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_maxRetriesExhaustedExitsWithOneLine() -> Any:
    procs = Processes()
    try:
        cli = procs.start(
            "client",
            *("--host", f"127.0.0.1:{freePort()}", "--max-retries", "2", *FAST_CLIENT),
            logfile=True,
        )
        code = yield cli.ended
        log = procs.log("client")
        assert code == EXIT_GAVE_UP, log[-3000:]
        assert log.count("gave up after 3 consecutive failures") == 1, log[-3000:]
        assert "Traceback" not in log
    finally:
        yield procs.cleanup()


class _NeverAcknowledges(Protocol):
    """
    A session client that reads everything and acknowledges nothing.
    """

    def __init__(self) -> None:
        self.received = 0
        self.closed: Deferred[None] = Deferred()
        self.pinger = LoopingCall(lambda: self.transport.write(encodePing(1, 1)))

    def connectionMade(self) -> None:
        hello = Hello(2, 0.5, 3.0, 1 << 20, "stuck", None, b"S" * 16, 0)
        self.transport.write(encodeHello(hello))
        self.pinger.start(0.5, now=False)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.pinger.running:
            self.pinger.stop()
        self.closed.callback(None)


class _Counting(HeartbeatProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.factory.got.append(message)


@pytest_twisted.inlineCallbacks
def test_broadcastIsolatesARecipientThatNeverAcknowledges() -> Any:
    """
    A broadcast recipient whose session buffer fills used to make the
    broadcast raise into the sender's connection (closed 1011, recipients
    after it skipped).  Now only that recipient is closed (SLOW_CONSUMER).
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    procs = Processes()
    receivers: list[KeepaliveClientFactory] = []
    stuck = _NeverAcknowledges()
    try:
        port, sStatus = freePort(), freePort()
        server(procs, "server", port, sStatus, "--mode", "broadcast", "--session-buffer", "3000")
        yield waitFor(listening(sStatus), 20, "the server")
        for i in range(2):
            f = KeepaliveClientFactory(
                HeartbeatConfig(interval=0.5, timeout=3.0, clientId=f"r{i}"),
                servers=[f"127.0.0.1:{port}"],
                resume=True,
            )
            f.protocol = _Counting
            f.got = []
            f.connect()
            receivers.append(f)
            yield f.whenConnected()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), stuck)
        yield waitFor(lambda: _now(stuck.received > 0), 5, "the stuck client's handshake")
        sender = pipeClient(procs, port, "--client-id", "sender", name="sender")
        sent = lines(0, 8_000)
        # Paced: a broadcast server has no flow control from its receivers
        # back to a sender, so a healthy receiver must not fall 3,000 behind
        # (its buffer) while this process is busy.  The stuck one fills it.
        for start in range(0, len(sent), 1_000):
            feed(sender, sent[start : start + 1_000])
            for f in receivers:
                yield waitFor(
                    lambda f=f, n=start + 1_000: _now(len(f.got) == n), 10, "the broadcasts"
                )
        sender.transport.closeStdin()
        code = yield sender.ended
        assert code == 0, procs.log("sender")[-3000:]
        for f in receivers:
            assert [m.decode() for m in f.got] == sent
            assert f.reconnects == 0
        yield stuck.closed
        s = yield status(sStatus)
        assert s["slow_consumers"] == 1, s
        assert s["disconnects"].get("slow-consumer") == 1, s
        assert "internal-error" not in str(s) and "Traceback" not in procs.log("sender")
    finally:
        for f in receivers:
            protocol = f.connected
            f.stopTrying()
            if protocol is not None:
                yield waitFor(lambda p=protocol: _now(p.closeReason is not None), 5, "close")
        if stuck.transport is not None:
            stuck.transport.abortConnection()
        yield procs.cleanup()
