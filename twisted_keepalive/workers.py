"""
C{--workers N}: N server processes on one listening port, so that a server
uses every core of its machine (a reactor uses one).

Each process opens its own socket on the port with C{SO_REUSEPORT}, and the
kernel spreads new connections across them; Twisted adopts the socket
(C{adoptStreamPort}).  The processes are nodes of one cluster (C{--cluster}):
presence and push work across them as across machines.  The first process
starts the others, relays their logs, restarts one that dies, and stops
them when it stops; each exits if the first one is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger(namespace="keepconn.workers")


def tcpAddress(description: str) -> tuple[str, int, int]:
    """
    (interface, port, backlog) of a C{tcp:} or C{tcp6:} endpoint string.

    @raise ValueError: it is not one.
    """
    from twisted.internet import reactor

    try:
        endpoint = serverFromString(reactor, description)
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"{description!r}: {e}") from None
    port = getattr(endpoint, "_port", None)
    if not description.startswith(("tcp:", "tcp6:")) or port is None:
        raise ValueError(f"{description!r} is not a tcp: endpoint")
    interface = getattr(endpoint, "_interface", "") or ""
    if description.startswith("tcp6:") and not interface:
        interface = "::"
    return interface, int(port), int(getattr(endpoint, "_backlog", 50))


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    A TCP port shared with other processes (C{SO_REUSEPORT}).

    @ivar boundPort: the port number once listening (port 0 picks one).
    """

    def __init__(self, interface: str, port: int, backlog: int = 50) -> None:
        self.interface = interface
        self.port = port
        self.backlog = backlog
        self.boundPort: int | None = None

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        from twisted.internet import reactor

        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            self.boundPort = sock.getsockname()[1]
            port = reactor.adoptStreamPort(sock.fileno(), family, factory)  # type: ignore[attr-defined]
        except OSError as e:
            from twisted.internet.error import CannotListenError

            raise CannotListenError(self.interface, self.port, e) from None
        finally:
            sock.close()  # the reactor has its own copy of the descriptor
        return succeed(port)


def dieWithParent(parent: int) -> None:
    """
    A worker exits when the process that started it does (even killed):
    Linux's parent-death signal, and a check for a parent already gone.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the first process still stops its workers
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class _Worker(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.buffer = b""
        self.ended: Deferred[None] = Deferred()
        self.running = False

    def connectionMade(self) -> None:
        self.running = True

    def outReceived(self, data: bytes) -> None:
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        if len(self.buffer) > 65536:
            lines.append(self.buffer)
            self.buffer = b""
        for line in lines:
            if line:
                log.info(
                    "worker {index}: {line}",
                    index=self.index,
                    line=line.decode("utf-8", "replace"),
                )

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(None)
        self.pool._ended(self, reason)


class WorkerPool(Service):
    """
    Starts C{count - 1} more processes running C{python -m twisted
    keepconn ARGS --worker I:PORT}; restarts one that dies (after
    C{restartDelay} seconds); stops them with SIGTERM (SIGKILL after
    C{stopTimeout}) when it stops.
    """

    def __init__(
        self,
        count: int,
        args: list[str],
        endpoint: ReusePortEndpoint,
        *,
        restartDelay: float = 1.0,
        stopTimeout: float = 10.0,
    ) -> None:
        self.count = count
        self.args = args
        self.endpoint = endpoint
        self.restartDelay = restartDelay
        self.stopTimeout = stopTimeout
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._stopping = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        from twisted.internet import reactor

        port = self.endpoint.boundPort or self.endpoint.port
        argv = [
            sys.executable,
            "-m",
            "twisted",
            "--log-format",
            "text",
            "keepconn",
            *self.args,
            "--worker",
            f"{index}:{port}:{os.getpid()}",
        ]
        worker = _Worker(self, index)
        self.workers[index] = worker
        reactor.spawnProcess(worker, sys.executable, argv, env=dict(os.environ))

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        from twisted.internet import reactor

        if self._stopping or self.workers.get(worker.index) is not worker:
            return
        self.restarts += 1
        log.warn(
            "Worker {index} exited ({why}); restarting it in {delay}s",
            index=worker.index,
            why=reason.value,
            delay=self.restartDelay,
        )
        reactor.callLater(self.restartDelay, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        if not self._stopping:
            self._spawn(index)

    def stopService(self) -> Deferred[Any]:
        from twisted.internet import reactor

        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        running = [w for w in self.workers.values() if w.running]
        for w in running:
            w.transport.signalProcess("TERM")  # type: ignore[union-attr]

        def kill() -> None:
            for w in running:
                if w.running:
                    w.transport.signalProcess("KILL")  # type: ignore[union-attr]

        call = reactor.callLater(self.stopTimeout, kill)
        done = DeferredList([w.ended for w in running])

        def cancel(result: object) -> object:
            if call.active():
                call.cancel()
            return result

        return done.addBoth(cancel)
