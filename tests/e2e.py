"""
Helpers for end-to-end tests: real `twistd -n keepconn` processes on
127.0.0.1, each killed and reaped by L{Processes.cleanup}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Twistd(ProcessProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred[int | None] = Deferred()
        self.exitCode: int | None = None
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.exitCode = reason.value.exitCode
        self.ended.callback(self.exitCode)

    def signal(self, name: str) -> None:
        if self.running:
            number = getattr(signal, "SIG" + name)
            self.transport.signalProcess(int(number))


class Processes:
    """
    Starts twistd processes and guarantees they are gone afterwards.
    """

    def __init__(self) -> None:
        self.all: list[Twistd] = []
        self.dir = tempfile.mkdtemp(prefix="keepconn-e2e-")

    def start(
        self,
        name: str,
        *args: str,
        logfile: bool = False,
        childFDs: Any = None,
        env: dict[str, str] | None = None,
    ) -> Twistd:
        process = Twistd(name)
        argv = [TWISTD, "-n", "--pidfile="]
        if logfile:
            argv.append(f"--logfile={os.path.join(self.dir, name + '.log')}")
        argv += ["keepconn", *args]
        reactor.spawnProcess(
            process,
            TWISTD,
            argv,
            env={**os.environ, **(env or {})},
            path=self.dir,
            childFDs=childFDs,
        )
        self.all.append(process)
        return process

    def log(self, name: str) -> str:
        with open(os.path.join(self.dir, name + ".log")) as f:
            return f.read()

    @pytest_twisted.inlineCallbacks
    def cleanup(self) -> Any:
        for p in self.all:
            if p.running:
                p.signal("CONT")
                p.signal("KILL")
        yield gatherResults([p.ended for p in self.all])


def rss(process: Twistd) -> int:
    """
    Resident memory of a running process, in bytes.
    """
    with open(f"/proc/{process.transport.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def get(url: str) -> Deferred[bytes]:
    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bytes(response.read())

    return deferToThread(fetch)


@pytest_twisted.inlineCallbacks
def status(port: int) -> Any:
    body = yield get(f"http://127.0.0.1:{port}/status")
    return json.loads(body)


@pytest_twisted.inlineCallbacks
def waitFor(check: Callable[[], Deferred[bool]], timeout: float, what: str) -> Any:
    """
    Poll C{check} every 50 ms; return the seconds it took, fail after C{timeout}.
    """
    started = reactor.seconds()
    while True:
        try:
            ok = yield check()
        except Exception:
            ok = False
        if ok:
            return reactor.seconds() - started
        if reactor.seconds() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, 0.05, lambda: None)


def clientIs(statusPort: int, state: str, server: str | None = None) -> Any:
    @pytest_twisted.inlineCallbacks
    def check() -> Any:
        s = yield status(statusPort)
        return s["state"] == state and (server is None or s["server"] == server)

    return check


def listening(statusPort: int) -> Any:
    @pytest_twisted.inlineCallbacks
    def check() -> Any:
        s = yield status(statusPort)
        return s["mode"] == "server"

    return check


FAST_CLIENT = [
    "--interval",
    "0.2",
    "--timeout",
    "0.8",
    "--initial-delay",
    "0.1",
    "--max-delay",
    "0.5",
    "--connect-timeout",
    "1",
    "--reset-after",
    "0.5",
]


def server(procs: Processes, name: str, port: int, statusPort: int, *extra: str) -> Twistd:
    return procs.start(
        name,
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--status",
        f"tcp:{statusPort}:interface=127.0.0.1",
        "--interval",
        "1",
        "--idle-timeout",
        "3",
        *extra,
    )
