"""
C{twistd keepconn --stdio}: standard input to the server line by line,
the server's messages to standard output, as a pipe that loses nothing
silently.

 - Standard input is read only while the client can take more: the line
   reader is the client factory's registered producer, so it is paused
   while the retransmit buffer (or the queue) is full and resumed when
   acknowledgements free room.  Nothing is dropped for lack of room.
 - Standard output is the consumer of the connection: when its buffer is
   full the client stops reading from the server (memory stays bounded by
   one read), and reads again once it has drained.
 - Every line is sent with a receipt; the process leaves once standard
   input has ended, every line is settled and the replies have stopped, with
   an exit status that says how it went (L{ExitStatus}).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .client import KeepaliveClientFactory
from .errors import DeliveryCancelled, MessageLost

log = Logger()

#: Exit statuses of C{twistd keepconn} (docs/operations.md).  When several
#: apply, the lowest wins.
EXIT_OK = 0
EXIT_GAVE_UP = 3  # --max-retries consecutive failures: the client stopped
EXIT_LOST = 4  # --stdio: a session was lost; some lines may not have arrived
EXIT_REFUSED = 5  # --stdio: some lines were refused (over the server's limit)

#: The longest line read from standard input; longer ones are refused (the
#: session's byte bound is 16 MiB).
MAX_LINE = (16 << 20) - 64

#: After standard input ends and every line is settled, how long nothing
#: must arrive (no reply, no acknowledgement) before the client leaves: a
#: server acknowledges a line when it receives it, before its application
#: replies, so replies may follow the last acknowledgement in a later read.
QUIET = 0.5


class ExitStatus:
    """
    The status the process exits with.  twistd always exits 0 after a clean
    reactor stop, so a non-zero status is applied at interpreter exit, after
    twistd's own clean-up (pid file, logs).
    """

    def __init__(self) -> None:
        self.code = EXIT_OK
        self._installed = False

    def fail(self, code: int) -> None:
        if not code:
            return
        if self.code == EXIT_OK or code < self.code:
            self.code = code
        if not self._installed:
            self._installed = True
            atexit.register(self._apply)

    def _apply(self) -> None:
        if self.code:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(self.code)


exitStatus = ExitStatus()


@implementer(IHalfCloseableProtocol, IPushProducer)
class StdinLines(Protocol):
    """
    Standard input as numbered lines, delivered one at a time while not
    paused.  Unlike L{LineReceiver}, a line over C{maxLine} is skipped alone
    (reported with its number and size), never with the lines after it, and
    memory holds at most one read plus one partial line.
    """

    def __init__(
        self,
        onLine: Callable[[int, bytes], None],
        onTooLong: Callable[[int, int], None],
        onEnd: Callable[[], None],
        onOutputClosed: Callable[[], None] = lambda: None,
        maxLine: int = MAX_LINE,
    ) -> None:
        self.onLine = onLine
        self.onTooLong = onTooLong
        self.onEnd = onEnd
        self.onOutputClosed = onOutputClosed
        self.maxLine = maxLine
        self.number = 0
        self.paused = False
        # Complete lines not yet delivered: bytes, or the size of a line
        # that was too long (kept in its place so numbering stays right).
        self._lines: deque[bytes | int] = deque()
        self._partial: list[bytes] = []
        self._partialSize = 0
        self._tooLong = False
        self._ended = False
        self._reported = False

    def dataReceived(self, data: bytes) -> None:
        parts = data.split(b"\n")
        last = parts.pop()
        for part in parts:
            self._extend(part)
            self._endLine()
        self._extend(last)
        self._deliver()

    def _extend(self, chunk: bytes) -> None:
        self._partialSize += len(chunk)
        if self._tooLong:
            return
        self._partial.append(chunk)
        if self._partialSize > self.maxLine:
            self._partial = []
            self._tooLong = True

    def _endLine(self) -> None:
        if self._tooLong:
            self._lines.append(self._partialSize)
        else:
            line = b"".join(self._partial)
            self._lines.append(line[:-1] if line.endswith(b"\r") else line)
        self._partial = []
        self._partialSize = 0
        self._tooLong = False

    def _deliver(self) -> None:
        lines = self._lines
        while lines and not self.paused:
            item = lines.popleft()
            self.number += 1
            if isinstance(item, int):
                self.onTooLong(self.number, item)
            else:
                self.onLine(self.number, item)
        if self._ended and not lines and not self._reported:
            self._reported = True
            self.onEnd()

    def readConnectionLost(self) -> None:
        if self._partialSize or self._tooLong:
            self._endLine()  # a last line without a newline
        self._ended = True
        self._deliver()

    def writeConnectionLost(self) -> None:
        self.onOutputClosed()

    # IPushProducer: the client factory pauses us while it is full.

    def pauseProducing(self) -> None:
        self.paused = True
        if self.transport is not None and not self._ended:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self.paused = False
        if self.transport is not None and not self._ended:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._deliver()

    def stopProducing(self) -> None:
        self.paused = True


@implementer(IPushProducer)
class _OutputFlow:
    """
    Registered with standard output: its buffer full, stop reading from
    the server; drained, read again.
    """

    def __init__(self, factory: KeepaliveClientFactory) -> None:
        self.factory = factory

    def pauseProducing(self) -> None:
        self.factory.pauseReading()

    def resumeProducing(self) -> None:
        self.factory.resumeReading()

    def stopProducing(self) -> None:
        self.factory.resumeReading()  # standard output is gone: nothing to protect


class StdioPipe:
    """
    Lines between standard input/output and a L{KeepaliveClientFactory}.

    @ivar sent: lines handed to the factory.
    @ivar confirmed: lines the server acknowledged (or, without a session,
        wrote).
    @ivar lost: lines that may not have arrived (their session was lost).
    @ivar refused: lines never sent (too long, or over the server's limit).
    """

    def __init__(
        self,
        factory: KeepaliveClientFactory,
        reactor: Any,
        finished: Callable[[int], None],
        raw: bool = False,
    ) -> None:
        self.factory = factory
        self.reactor = reactor
        self.finished = finished
        # Raw (a foreign protocol): lines go out with their newline and what
        # comes back is a byte stream, written as it is.
        self.raw = raw
        self.lines = StdinLines(self._line, self._tooLong, self._stdinEnded, self._outputClosed)
        self._outputOpen = True
        self.stdio: Any = None
        self.sent = self.confirmed = self.lost = self.refused = 0
        self.sessionLost = False
        self._stdinDone = False
        self._leaving = False
        self._lastHeard = 0.0
        self._check: Any = None
        self._lostLines: list[int] = []
        self._lostReport: Any = None

    def start(self, stdio: Any = None) -> None:
        if stdio is None:
            from twisted.internet.stdio import StandardIO

            stdio = StandardIO(self.lines)
        self.stdio = stdio
        self.factory.registerProducer(self.lines, True)
        stdio.registerProducer(_OutputFlow(self.factory), True)

    @property
    def outstanding(self) -> int:
        return self.sent - self.confirmed - self.lost - self.refused

    # Standard input

    def _line(self, number: int, line: bytes) -> None:
        if self.raw:
            line += b"\n"
        self.sent += 1
        try:
            receipt = self.factory.sendConfirmed(line)
        except Exception as e:  # over the server's limit, or full under a drop policy
            self._refuse(number, len(line), str(e))
            return
        receipt.addCallbacks(self._confirmed, self._failed, errbackArgs=(number, len(line)))

    def _tooLong(self, number: int, size: int) -> None:
        self.sent += 1
        self._refuse(number, size, f"longer than {self.lines.maxLine} bytes")

    def _refuse(self, number: int, size: int, why: str) -> None:
        self.refused += 1
        log.warn("Line {number} ({size} bytes) not sent: {why}", number=number, size=size, why=why)
        self._settled()

    def _confirmed(self, seq: object) -> None:
        self._lastHeard = self.reactor.seconds()
        self.confirmed += 1
        self._settled()

    def _failed(self, failure: Failure, number: int, size: int) -> None:
        if not failure.check(MessageLost, DeliveryCancelled):  # too large, or dropped
            self._refuse(number, size, failure.getErrorMessage())
            return
        self.lost += 1  # may not have arrived (cancelled: stopped before acknowledged)
        self._lostLines.append(number)
        if self._lostReport is None:
            # One line for a whole batch (a session loss settles many at once).
            self._lostReport = self.reactor.callLater(0, self._reportLost)
        self._settled()

    def _reportLost(self) -> None:
        self._lostReport = None
        numbers, self._lostLines = self._lostLines, []
        if numbers:
            log.warn(
                "{count} lines may not have arrived (session lost): {lines}",
                count=len(numbers),
                lines=describeNumbers(numbers),
            )

    def _stdinEnded(self) -> None:
        self._stdinDone = True
        self._settled()

    # Standard output

    def deliver(self, message: bytes) -> None:
        self._lastHeard = self.reactor.seconds()
        if self.stdio is not None and self._outputOpen:
            self.stdio.write(message if self.raw else message + b"\n")

    def _outputClosed(self) -> None:
        if self._outputOpen and not self._leaving:
            log.warn("Standard output was closed: messages from the server are discarded")
        self._outputOpen = False
        if self._leaving:
            self.reactor.stop()

    # Leaving

    def noteSessionLost(self, undelivered: list[bytes], established: bool) -> None:
        """
        The server no longer had our session: its replies to us may be
        lost too, whether or not any line was in flight.
        """
        if established or undelivered:
            self.sessionLost = True

    def connectionReady(self) -> None:
        self._settled()

    def _settled(self) -> None:
        """
        Leave once standard input is done, every line is settled, a
        connection is up (replies the server kept for us are replayed on
        one) and neither a reply nor an acknowledgement has arrived for
        L{QUIET} seconds.
        """
        if not self._stdinDone or self._leaving or self.outstanding or self._check is not None:
            return
        # Decided in a reactor turn of its own, never inside the callback
        # that settled the last receipt: the read that carried it may still
        # be delivering messages.
        self._check = self.reactor.callLater(0, self._checkAgain)

    def _checkAgain(self) -> None:
        self._check = None
        if not self._stdinDone or self._leaving or self.outstanding:
            return
        now = self.reactor.seconds()
        quietAt = self._lastHeard + QUIET
        if self.factory.connected is not None and now >= quietAt:
            self._leave()
        else:
            delay = max(quietAt - now, 0.05)
            self._check = self.reactor.callLater(delay, self._checkAgain)

    def _leave(self) -> None:
        self._leaving = True
        code = EXIT_OK
        if self.lost or self.sessionLost:
            code = EXIT_LOST
        elif self.refused:
            code = EXIT_REFUSED
        log.info(
            "Standard input done: {confirmed} lines delivered, {lost} may be lost, "
            "{refused} refused; stopping",
            confirmed=self.confirmed,
            lost=self.lost,
            refused=self.refused,
        )
        self.finished(code)
        if self._outputOpen and self.stdio is not None:
            self.stdio.loseWriteConnection()  # flushed first; then _outputClosed stops
        else:
            self.reactor.stop()

    def cancel(self) -> None:
        for name in ("_check", "_lostReport"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)


def describeNumbers(numbers: list[int], most: int = 10) -> str:
    """
    C{[1, 2, 3, 7]} as C{"1-3, 7"}; at most C{most} ranges, then "...".
    """
    ranges: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    if len(ranges) > most:
        return ", ".join(ranges[:most]) + f", ... ({len(ranges) - most} more ranges)"
    return ", ".join(ranges)
