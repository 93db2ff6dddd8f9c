"""
pytest configuration: real-reactor tests must leave no timer behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogBeginner
from zope.interface import provider

_LEVELS = {
    LogLevel.debug: logging.DEBUG,
    LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING,
    LogLevel.error: logging.ERROR,
    LogLevel.critical: logging.CRITICAL,
}


@provider(ILogObserver)
def _toStdlib(event: LogEvent) -> None:
    """
    Each Twisted log event, formatted to text at once, into stdlib logging
    (which pytest shows for a failing test).  Nothing keeps the event: it
    holds its source (a protocol), and leak checks count protocols.
    """
    level = _LEVELS.get(event.get("log_level", LogLevel.info), logging.INFO)
    name = event.get("log_namespace") or "twisted"
    logger = logging.getLogger(name)
    if logger.isEnabledFor(level):
        logger.log(level, "%s", formatEvent(event))


# trial begins Twisted's logging itself; under pytest nobody does, and the
# global log beginner would keep the last 65,536 events (with their
# sources) in memory for the whole run.
globalLogBeginner.beginLoggingTo([_toStdlib], redirectStandardIO=False)


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
