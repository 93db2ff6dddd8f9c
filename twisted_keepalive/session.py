"""
A session: what makes delivery exactly-once and in order across
reconnections (protocol version 2).

Pure bookkeeping, no I/O.  Each side numbers the messages it sends (from 1)
and keeps each one until the peer acknowledges it cumulatively; each side
remembers the highest number it delivered and drops anything at or below
it.  After a reconnection the two HELLOs carry the session id and that
number, so each side resends exactly what the other has not received.

See docs/protocol.md, "Sessions", for the wire format and the guarantee.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from enum import Enum
from typing import Any

from .budget import MESSAGE_COST, MemoryBudget
from .errors import (
    DeliveryCancelled,
    DeliveryFailed,
    LocalProtocolError,
    MessageDropped,
    MessageLost,
    RemoteProtocolError,
)


class Overflow(Enum):
    """
    What a full send queue or retransmit buffer does with one more message.
    """

    RAISE = "raise"
    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"


class QueueFull(LocalProtocolError):
    """
    The send queue or retransmit buffer is full and the overflow policy is
    L{Overflow.RAISE}.
    """


#: A receipt settled: C{(receipt, seq, None)} once acknowledged (C{seq} is
#: L{None} when the message went out without a session), or
#: C{(receipt, None, error)} when it never will be.
Settled = tuple[Any, "int | None", "DeliveryFailed | None"]


class Session:
    """
    One side's state of a session.

    Receipts are opaque objects (the Twisted shell uses Deferreds) stored
    beside the messages that have one; when a message is acknowledged,
    dropped, refused or lost, its receipt moves to L{settled} for the shell
    to fire once the current operation is over (never from inside the
    decoder's loop).

    @ivar id: 16 random bytes chosen by the client, which names the session
        in each HELLO (so a first handshake cut short can still be resumed).
    @ivar established: a handshake has attached it; if the server then
        starts it afresh, what was in flight is lost.
    @ivar nextSeq: the number the next stored message gets.
    @ivar sent: the highest number written to any connection so far.
    @ivar acked: the highest number the peer acknowledged.
    @ivar received: the highest number delivered to the application.
    @ivar pendingAcks: messages delivered since the last acknowledgement
        we sent.
    @ivar duplicates: messages dropped because they were delivered before.
    @ivar missing: numbers skipped by the peer (its DROP_OLDEST overflow).
    @ivar dropped: messages this side dropped by its overflow policy.
    @ivar elastic: a producer is registered upstream: it is paused when the
        buffer is full, and what it still sends after that (a line already
        read, a chunk in hand) is kept, up to twice the bounds, before the
        overflow policy applies.  Backpressure instead of loss.
    @ivar settled: receipts to fire, in order (see L{Settled}).
    @ivar reachedBound: L{store} filled the buffer (L{isFull}) since the
        shell last cleared this: the edge on which it pauses a producer,
        known without a check per message.
    @ivar budget: a server's L{MemoryBudget} shared by all its sessions,
        charged for every stored message (length + L{MESSAGE_COST}); at its
        limit L{store} raises L{QueueFull} whatever the overflow policy.
    """

    __slots__ = (
        "_unacked",
        "acked",
        "budget",
        "dropped",
        "duplicates",
        "elastic",
        "established",
        "id",
        "maxBytes",
        "maxMessages",
        "missing",
        "nextSeq",
        "overflow",
        "pendingAcks",
        "reachedBound",
        "receipts",
        "received",
        "sent",
        "settled",
        "unackedBytes",
    )

    def __init__(
        self,
        sessionId: bytes = b"",
        *,
        maxMessages: int = 10_000,
        maxBytes: int = 16 << 20,
        overflow: Overflow = Overflow.RAISE,
    ) -> None:
        if maxMessages < 1 or maxBytes < 1:
            raise ValueError("a retransmit buffer needs room for at least one message")
        self.id = sessionId
        self.established = False
        self.maxMessages = maxMessages
        self.maxBytes = maxBytes
        self.overflow = overflow
        self.nextSeq = 1
        self.sent = 0
        self.acked = 0
        self.received = 0
        self.pendingAcks = 0
        self.duplicates = 0
        self.missing = 0
        self.dropped = 0
        self._unacked: deque[tuple[int, bytes]] = deque()
        self.unackedBytes = 0
        self.elastic = False
        self.reachedBound = False
        self.receipts: dict[int, Any] = {}
        self.settled: list[Settled] = []
        self.budget: MemoryBudget | None = None

    def __len__(self) -> int:
        """Messages stored and not yet acknowledged (sent or not)."""
        return len(self._unacked)

    @property
    def isFull(self) -> bool:
        """
        No room for another message within the bounds: pause the producer.
        """
        return len(self._unacked) >= self.maxMessages or self.unackedBytes >= self.maxBytes

    @property
    def hasRoom(self) -> bool:
        """
        At most half full (the low-water mark): resume the producer.
        """
        return (
            len(self._unacked) <= self.maxMessages // 2 and self.unackedBytes <= self.maxBytes // 2
        )

    # Sending

    def store(self, message: bytes, receipt: Any = None) -> int | None:
        """
        Number C{message} and keep it until acknowledged.

        @param receipt: settled when the message is acknowledged or can no
            longer be.
        @return: its sequence number, or L{None} if the overflow policy
            dropped it (L{Overflow.DROP_NEWEST}).
        @raise QueueFull: the buffer is full and the policy is RAISE.
        """
        size = len(message)
        if size > self.maxBytes:
            raise QueueFull(f"message of {size} bytes exceeds the retransmit buffer")
        while len(self._unacked) >= self.maxMessages or self.unackedBytes + size > self.maxBytes:
            if (
                self.elastic
                and len(self._unacked) < 2 * self.maxMessages
                and self.unackedBytes + size <= 2 * self.maxBytes
            ):
                break  # a paused producer's last messages: kept (twice the bounds)
            if self.overflow is Overflow.RAISE:
                raise QueueFull(
                    f"retransmit buffer is full ({len(self._unacked)} messages, "
                    f"{self.unackedBytes} bytes unacknowledged)"
                )
            self.dropped += 1
            if self.overflow is Overflow.DROP_NEWEST:
                if receipt is not None:
                    self.settled.append((receipt, None, MessageDropped(message, _FULL)))
                return None
            oldSeq, old = self._unacked.popleft()
            self.unackedBytes -= len(old)
            self._released(1, len(old))
            dropped = self.receipts.pop(oldSeq, None) if self.receipts else None
            if dropped is not None:
                self.settled.append((dropped, None, MessageDropped(old, _FULL)))
        budget = self.budget
        if budget is not None:
            cost = size + MESSAGE_COST
            if budget.used + cost > budget.limit and not budget.admit(self, cost):
                raise QueueFull(
                    f"the server's memory budget ({budget.limit} bytes) is spent; "
                    f"this session holds {self.unackedBytes} bytes unacknowledged"
                )
            budget.used += cost
        # _append, inlined: this is the data path of every session message.
        seq = self.nextSeq
        self.nextSeq = seq + 1
        unacked = self._unacked
        unacked.append((seq, message))
        self.unackedBytes += size
        if receipt is not None:
            self.receipts[seq] = receipt
        if len(unacked) >= self.maxMessages or self.unackedBytes >= self.maxBytes:
            self.reachedBound = True
        return seq

    def _append(self, message: bytes, receipt: Any) -> int:
        seq = self.nextSeq
        self.nextSeq = seq + 1
        self._unacked.append((seq, message))
        self.unackedBytes += len(message)
        if self.budget is not None:
            self.budget.used += len(message) + MESSAGE_COST
        if receipt is not None:
            self.receipts[seq] = receipt
        return seq

    def _released(self, count: int, size: int) -> None:
        """C{count} messages of C{size} bytes in all left the buffer."""
        if self.budget is not None:
            self.budget.used -= size + count * MESSAGE_COST

    def releaseBudget(self) -> None:
        """
        The session is forgotten: give back all it holds, for good.
        """
        self._released(len(self._unacked), self.unackedBytes)
        self.budget = None

    def acknowledge(self, upTo: int) -> int:
        """
        The peer has every message up to C{upTo}: forget them.

        @return: how many were freed.
        @raise RemoteProtocolError: C{upTo} acknowledges a message never sent.
        """
        if upTo > self.sent:
            raise RemoteProtocolError(
                f"acknowledgement of message {upTo}, but only {self.sent} were sent"
            )
        if upTo <= self.acked:
            return 0
        self.acked = upTo
        unacked = self._unacked
        before = len(unacked)
        heldBefore = self.unackedBytes
        receipts = self.receipts
        if receipts:
            while unacked and unacked[0][0] <= upTo:
                seq, message = unacked.popleft()
                self.unackedBytes -= len(message)
                receipt = receipts.pop(seq, None)
                if receipt is not None:
                    self.settled.append((receipt, seq, None))
        elif unacked:
            # The data path of a session without receipts: numbers are
            # consecutive (but after a refusal), so how many to drop is
            # known; bytes are summed locally, stored once.
            count = upTo - unacked[0][0] + 1
            if count > len(unacked) or (count > 0 and unacked[count - 1][0] != upTo):
                count = 0  # a gap (a message refused): count them
                for seq, _ in unacked:
                    if seq > upTo:
                        break
                    count += 1
            popleft = unacked.popleft
            size = 0
            for _ in range(count):
                size += len(popleft()[1])
            self.unackedBytes -= size
        freed = before - len(unacked)
        if self.budget is not None:
            self.budget.used -= heldBefore - self.unackedBytes + freed * MESSAGE_COST
        return freed

    def unsent(self) -> Iterator[tuple[int, bytes]]:
        """
        The stored messages to write now: after a resume, everything not
        acknowledged; otherwise, those stored while disconnected.
        """
        for seq, message in self._unacked:
            if seq > self.sent:
                yield seq, message

    def rewind(self) -> None:
        """
        A new connection: what the peer has not acknowledged must be sent
        again.
        """
        self.sent = self.acked

    # Persistence (a cluster keeps a server's sessions in Redis)

    @property
    def firstUnacked(self) -> int:
        """The number of the oldest message kept, or L{nextSeq} if none is."""
        return self._unacked[0][0] if self._unacked else self.nextSeq

    def storedSince(self, seq: int) -> list[tuple[int, bytes]]:
        """
        The messages kept that are numbered C{seq} or more, oldest first:
        what was stored since a snapshot that ended before C{seq}.
        """
        newer: list[tuple[int, bytes]] = []
        for item in reversed(self._unacked):
            if item[0] < seq:
                break
            newer.append(item)
        newer.reverse()
        return newer

    def stored(self) -> list[tuple[int, bytes]]:
        """Every message kept, oldest first, with its number."""
        return list(self._unacked)

    def restore(
        self, received: int, nextSeq: int, acked: int, messages: list[tuple[int, bytes]]
    ) -> None:
        """
        Take the state a snapshot saved (another server's, for a resume
        there): everything kept counts as sent, as it may have been.
        """
        self._released(len(self._unacked), self.unackedBytes)
        self._unacked = deque(sorted(messages))
        self.unackedBytes = sum(len(m) for _, m in messages)
        if self.budget is not None:
            self.budget.used += self.unackedBytes + len(messages) * MESSAGE_COST
        self.received = received
        self.nextSeq = nextSeq
        self.sent = nextSeq - 1
        self.acked = acked
        self.pendingAcks = 0
        self.established = True

    # Receiving

    def accept(self, seq: int) -> bool:
        """
        Whether the message numbered C{seq} is new (deliver it) or a
        duplicate from a replay (drop it).
        """
        received = self.received
        if seq <= received:
            self.duplicates += 1
            return False
        if seq != received + 1:
            self.missing += seq - received - 1
        self.received = seq
        self.pendingAcks += 1
        return True

    # Loss

    def restart(self, why: str = "the session was lost") -> list[bytes]:
        """
        The peer does not know this session (its grace period ran out, or
        this is another server): start it afresh.

        @return: the messages that were written and not acknowledged: they
            may or may not have arrived, and are not resent (their receipts
            fail with L{MessageLost}).  Those never written are kept,
            renumbered from 1, and go out in the new session.
        """
        receipts, self.receipts = self.receipts, {}
        lost: list[bytes] = []
        keep: list[tuple[bytes, Any]] = []
        for seq, m in self._unacked:
            receipt = receipts.get(seq)
            if seq <= self.sent:
                lost.append(m)
                if receipt is not None:
                    self.settled.append((receipt, None, MessageLost(m, why)))
            else:
                keep.append((m, receipt))
        self.nextSeq = 1
        self.sent = self.acked = self.received = self.pendingAcks = 0
        self._released(len(self._unacked), self.unackedBytes)
        self._unacked.clear()
        self.unackedBytes = 0
        for m, receipt in keep:
            self._append(m, receipt)  # they fitted before: no overflow now
        return lost

    def drain(self) -> list[bytes]:
        """
        Take every stored message out (to send without a session, now) and
        forget them; their receipts are settled as written.
        """
        for seq, _ in self._unacked:
            receipt = self.receipts.pop(seq, None)
            if receipt is not None:
                self.settled.append((receipt, None, None))
        messages = [m for _, m in self._unacked]
        self._released(len(self._unacked), self.unackedBytes)
        self._unacked.clear()
        self.unackedBytes = 0
        self.sent = self.acked = self.nextSeq - 1
        return messages

    def refuse(self, seq: int, error: DeliveryFailed) -> bytes | None:
        """
        Take the message numbered C{seq} out, never to be sent (it is over
        the peer's frame limit); the peer sees a gap, as after a drop.
        """
        for index, (stored, message) in enumerate(self._unacked):
            if stored == seq:
                del self._unacked[index]
                self.unackedBytes -= len(message)
                self._released(1, len(message))
                receipt = self.receipts.pop(seq, None)
                if receipt is not None:
                    self.settled.append((receipt, None, error))
                return message
        return None

    def cancelReceipts(self, why: str) -> None:
        """
        Nobody will wait for acknowledgements any more (the factory
        stopped): fail every receipt still pending.
        """
        if not self.receipts:
            return
        receipts, self.receipts = self.receipts, {}
        for seq, message in self._unacked:
            receipt = receipts.get(seq)
            if receipt is not None:
                self.settled.append((receipt, None, DeliveryCancelled(message, why)))

    def takeSettled(self) -> list[Settled]:
        """The receipts settled since the last call, oldest first."""
        settled, self.settled = self.settled, []
        return settled


_FULL = "the send buffer was full (overflow policy)"
