"""
A server's memory budget: one count of the bytes held for all clients, so
that many clients, each within its own bounds, cannot together exhaust the
process.

Two things hold memory for a client: its session's retransmit buffer
(messages it has not acknowledged, kept for a resume) and output it has not
read (written while the transport reports its buffer full).  Both charge
the budget as they grow and release it as they shrink; what happens at the
limit is the owner's policy (L{KeepaliveServerFactory}: forget sessions in
their grace period, oldest first, then refuse the client holding the most).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Bytes charged per stored message on top of its length: the bytes
#: object's header, the tuple and the deque slot that keep it (measured
#: with tracemalloc on CPython 3.11-3.13: 90-100 bytes).
MESSAGE_COST = 96


class MemoryBudget:
    """
    Bytes held, against a limit.

    @ivar used: bytes charged now.
    @ivar limit: the most that may be charged.
    @ivar makeRoom: C{makeRoom(holder, size)}: called when charging C{size}
        more for C{holder} (a session) would pass the limit; frees what it
        can and returns whether the charge may go ahead.
    @ivar refusals: charges refused at the limit.
    """

    __slots__ = ("limit", "makeRoom", "refusals", "used")

    def __init__(self, limit: int, makeRoom: Callable[[Any, int], bool] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"a memory budget must be at least 1 byte, not {limit!r}")
        self.limit = limit
        self.used = 0
        self.refusals = 0
        self.makeRoom = makeRoom

    def admit(self, holder: Any, size: int) -> bool:
        """
        Whether C{size} more bytes may be held for C{holder}, making room
        if needed; the caller then charges them (C{used += size}).
        """
        if self.used + size <= self.limit:
            return True
        if self.makeRoom is not None and self.makeRoom(holder, size):
            return True
        self.refusals += 1
        return False

    def release(self, size: int) -> None:
        self.used -= size

    @property
    def over(self) -> bool:
        return self.used > self.limit
