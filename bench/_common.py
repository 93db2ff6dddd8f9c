"""
What the benchmarks share: process CPU and memory, child processes that
speak JSON lines, medians.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))


def cpu() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss() -> int:
    """Resident set size of this process, in bytes (from /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def raiseFileLimit(wanted: int) -> int:
    """Raise the soft descriptor limit towards C{wanted}; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class Child:
    """
    A benchmark process started from a script in bench/ that reads commands
    and writes one JSON object per line on stdout.
    """

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(BENCH, script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark process {self.proc.args!r} ended early")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def serveCommands(handlers: dict[str, Any]) -> None:
    """
    In a child: answer each command line on stdin with the JSON its handler
    returns, from the reactor thread.  End of stdin stops the reactor.
    """
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            answer = handlers[line.decode().strip()]()
            self.transport.write(json.dumps(answer).encode() + b"\n")

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    stdio.StandardIO(Commands())


def say(obj: dict[str, Any]) -> None:
    """In a child: one JSON line on stdout (before the command loop runs)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
