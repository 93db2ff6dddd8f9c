"""
Signals for C{twistd keepconn}: SIGTERM and SIGINT stop gracefully (exit
status 0), SIGHUP reopens the log file.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import reactor as _reactor
from twisted.logger import Logger

reactor: Any = _reactor
log = Logger()


class GracefulSignals(Service):
    """
    SIGTERM and SIGINT stop the reactor gracefully and let twistd exit with
    status 0: the services' own stopService sends CLOSE (a client) or
    GOING_AWAY (a server) first.  (twistd's own handlers re-raise the signal
    after shutdown, which makes the exit status 128 + signal.)  SIGHUP
    reopens the log file.
    """

    def startService(self) -> None:
        super().startService()
        reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        import signal

        stopping: list[str] = []

        def stop(number: int, frame: Any) -> None:
            name = signal.Signals(number).name
            if stopping:
                # A second signal (an impatient operator, a supervisor and
                # its process group): the graceful stop is under way.
                log.info("Received {signal} again; already stopping", signal=name)
                return
            stopping.append(name)
            log.info("Received {signal}; stopping gracefully", signal=name)
            reactor.callFromThread(reactor.stop)

        def hangup(number: int, frame: Any) -> None:
            reactor.callFromThread(reopenLog)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hangup)


def _twistdLogFile() -> Any:
    """
    The log file twistd writes (C{--logfile}), found where twistd keeps it:
    in the SIGUSR1 handler it installs to rotate it.  L{None} when logging
    goes to standard output or syslog.
    """
    import signal

    from twisted.python.logfile import LogFile

    handler = signal.getsignal(signal.SIGUSR1)
    for cell in getattr(handler, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, LogFile):
            return value
    return None


def reopenLog() -> None:
    """
    SIGHUP: reopen the log file, for rotation tools that move it aside
    (logrotate without copytruncate).  Before, SIGHUP killed the server
    without a word to its clients.
    """
    logFile = _twistdLogFile()
    if logFile is None:
        log.info("Received SIGHUP: no log file to reopen (logging to a stream)")
        return
    logFile.reopen()
    log.info("Received SIGHUP: reopened {path}", path=logFile.path)
