"""
pytest configuration: real-reactor tests must leave no timer behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def noDelayedCallsLeft() -> Iterator[None]:
    """
    Deterministic tests use their own Clock; real-socket tests must cancel
    or fire every timer they cause on the global reactor.
    """
    yield
    from twisted.internet import reactor

    left = [c for c in reactor.getDelayedCalls() if c.active()]
    assert left == [], f"DelayedCalls left behind: {left}"
