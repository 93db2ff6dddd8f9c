"""
The tour behind C{./scripts/demo}: two real C{twistd -n keepconn}
processes on 127.0.0.1, a server and a client.  The server freezes (SIGSTOP:
it sends nothing and closes nothing, like a hung process or a dropped NAT
mapping); the client's heartbeat notices within its timeout; the server is
killed and restarted on the same port; the client recovers by itself.
Everything shown is read from the client's own C{/status} endpoint.

Run it with C{python -m twisted_keepalive.demo}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
START = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:5.1f}s] {message}", flush=True)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result
    except OSError:
        return None


class Demo:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="keepconn-demo-")
        self.port, self.serverStatus, self.clientStatus = freePort(), freePort(), freePort()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.lastLine = ""

    def twistd(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        argv = [TWISTD, "-n", "--pidfile=", f"--logfile={self.dir}/{name}.log", "keepconn", *args]
        say("$ twistd -n keepconn " + " ".join(args))
        process = subprocess.Popen(argv, cwd=self.dir)
        self.processes.append(process)
        return process

    def startServer(self, name: str) -> subprocess.Popen[bytes]:
        process = self.twistd(
            name,
            f"--listen=tcp:{self.port}:interface=127.0.0.1",
            f"--status=tcp:{self.serverStatus}:interface=127.0.0.1",
            "--interval=1",
            "--idle-timeout=4",
        )
        self.waitFor(lambda: status(self.serverStatus) is not None, 20, "the server")
        return process

    def show(self) -> dict[str, Any] | None:
        s = status(self.clientStatus)
        if s is None:
            return None
        rtt = "-" if s["rtt"] is None else f"{s['rtt'] * 1000:.2f} ms"
        line = (
            f"client: {s['state']:<10} server {s['server']}  smoothed RTT {rtt}  "
            f"reconnects {s['reconnects']}  heartbeat timeouts {s['heartbeat_timeouts']}"
        )
        if s["state"] == "waiting" and s["last_error"]:
            line += f"  (last: {s['last_error'][:60]})"
        if line != self.lastLine:
            say(line)
            self.lastLine = line
        return s

    def waitFor(self, check: Any, timeout: float, what: str) -> float:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise SystemExit(f"FAILED: no {what} within {timeout:g}s (logs in {self.dir})")
            time.sleep(0.1)
        return time.monotonic() - started

    def watch(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.show()
            time.sleep(0.1)

    def run(self) -> int:
        server = self.startServer("server")
        self.twistd(
            "client",
            f"--host=127.0.0.1:{self.port}",
            f"--status=tcp:{self.clientStatus}:interface=127.0.0.1",
            "--interval=0.5",
            "--timeout=1.5",
            "--initial-delay=0.5",
            "--max-delay=2",
            "--jitter=equal",
            "--connect-timeout=2",
            "--reset-after=2",
        )
        self.waitFor(lambda: (self.show() or {}).get("state") == "connected", 20, "connection")
        self.watch(2.0)

        say("server FREEZES (SIGSTOP): no FIN, no RST, its socket stays open")
        frozen = time.monotonic()
        server.send_signal(signal.SIGSTOP)
        self.waitFor(lambda: (self.show() or {}).get("heartbeat_timeouts") == 1, 10, "detection")
        say(f"detected {time.monotonic() - frozen:.2f}s after the freeze (timeout 1.5s)")
        self.watch(1.5)

        say("server killed (SIGKILL) and restarted on the same port")
        server.kill()
        server.wait()
        restarted = time.monotonic()
        server = self.startServer("server2")
        self.waitFor(
            lambda: (s := self.show()) is not None and s["state"] == "connected", 10, "recovery"
        )
        say(f"recovered {time.monotonic() - restarted:.2f}s after the restart began")
        self.watch(1.5)

        say("stopping both with SIGTERM (graceful: CLOSE and GOING_AWAY are sent)")
        codes = []
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                codes.append(process.wait(timeout=10))
        say(f"exit codes {codes}; logs in {self.dir}")
        return 0 if all(code == 0 for code in codes) else 1

    def cleanup(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()


def main() -> int:
    demo = Demo()
    try:
        return demo.run()
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
