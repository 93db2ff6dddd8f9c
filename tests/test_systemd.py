"""
systemd notification: the protocol on a fake clock, and `twistd keepconn`
under a NOTIFY_SOCKET of the test's own (pytest only for the latter).
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

import pytest_twisted
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive.systemd import SystemdNotifier

from .e2e import Processes, freePort
from .test_hostile_e2e import sleep


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="keepconn-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()
        os.remove(self.path)
        os.rmdir(self.dir)


class NotifierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.listener = Listener()
        self.addCleanup(self.listener.close)
        self.clock = Clock()

    def test_silentWithoutNotifySocket(self) -> None:
        notifier = SystemdNotifier(self.clock, {})
        notifier.markReady()
        self.assertFalse(notifier.enabled)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_readyWatchdogStopping(self) -> None:
        env = {"NOTIFY_SOCKET": self.listener.path, "WATCHDOG_USEC": "2000000"}
        notifier = SystemdNotifier(self.clock, env)
        notifier.markReady("listening")
        notifier.markReady("again")  # once
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        notifier.stopping()
        self.assertEqual(
            self.listener.messages(),
            ["READY=1\nSTATUS=listening", "WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_watchdogForAnotherProcessIgnored(self) -> None:
        env = {
            "NOTIFY_SOCKET": self.listener.path,
            "WATCHDOG_USEC": "2000000",
            "WATCHDOG_PID": str(os.getpid() + 1),
        }
        notifier = SystemdNotifier(self.clock, env)
        notifier.markReady()
        self.assertIsNone(notifier.watchdogPeriod)
        self.assertEqual(self.clock.getDelayedCalls(), [])


@pytest_twisted.inlineCallbacks
def test_daemonTellsSystemd() -> Any:
    listener = Listener()
    procs = Processes()
    try:
        port = freePort()
        env = {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"}
        server = procs.start("server", "--listen", f"tcp:{port}:interface=127.0.0.1", env=env)
        client = procs.start("client", "--host", f"127.0.0.1:{port}", env=env)
        got: list[str] = []
        for _ in range(60):
            yield sleep(0.05)
            got += listener.messages()
            if sum(m.startswith("READY=1") for m in got) == 2 and got.count("WATCHDOG=1") >= 4:
                break
        ready = [m for m in got if m.startswith("READY=1")]
        assert any("listening on" in m for m in ready), got
        assert any("connected to" in m for m in ready), got
        assert got.count("WATCHDOG=1") >= 4, got
        client.signal("TERM")
        server.signal("TERM")
        yield client.ended
        yield server.ended
        got += listener.messages()
        assert got.count("STOPPING=1") == 2, got
    finally:
        yield procs.cleanup()
        listener.close()
