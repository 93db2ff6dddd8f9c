"""
systemd's service notification protocol (sd_notify), without libsystemd:
C{READY=1} once the service is ready, C{WATCHDOG=1} at half the watchdog
period, C{STOPPING=1} on the way out.  Does nothing unless systemd set
C{NOTIFY_SOCKET} (C{Type=notify} in the unit); the watchdog only with
C{WatchdogSec=} (C{WATCHDOG_USEC}, for this process: C{WATCHDOG_PID}).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


class SystemdNotifier:
    """
    Tell systemd how the service is doing, if it is listening.
    """

    def __init__(self, clock: IReactorTime, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.clock = clock
        self.address = env.get("NOTIFY_SOCKET") or None
        if self.address is not None and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]  # an abstract socket
        self.watchdogPeriod: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdogPeriod = int(usec) / 1_000_000
        self._watchdog: LoopingCall | None = None
        self.ready = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send one notification; whether it went."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(state.encode(), self.address)
            return True
        except OSError as e:
            log.warn("Cannot notify systemd ({state}): {error}", state=state, error=e.strerror)
            return False

    def markReady(self, status: str = "") -> None:
        """READY=1 (once), and start the watchdog if systemd asked for one."""
        if self.ready:
            return
        self.ready = True
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if self.watchdogPeriod is not None and self.address is not None:
            self._watchdog = LoopingCall(self.notify, "WATCHDOG=1")
            self._watchdog.clock = self.clock
            self._watchdog.start(self.watchdogPeriod / 2, now=True)

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        self.notify("STOPPING=1")
