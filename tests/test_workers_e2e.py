"""
C{--workers N} end to end: N processes on one port (SO_REUSEPORT), joined by
a real Redis; push and presence across them; a dead worker is restarted;
stopping (or killing) the first process leaves no worker behind.  Plain
functions (pytest runs them; trial skips this module).
"""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import deferLater

from .cluster_e2e import client, connectedTo, post, stopClients
from .e2e import Processes, freePort, listening, status, waitFor
from .redis_server import RedisServer


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest_twisted.inlineCallbacks
def startWorkers(procs: Processes, redisPort: int, count: int) -> Any:
    port, statusPort = freePort(), freePort()
    proc = procs.start(
        "workers",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--status",
        f"tcp:{statusPort}",
        "--cluster",
        f"redis://127.0.0.1:{redisPort}/0",
        "--node",
        "w",
        "--cluster-ttl",
        "2",
        "--workers",
        str(count),
        "--shutdown-timeout",
        "1",
        logfile=True,
    )
    yield waitFor(listening(statusPort), 20, "the first worker")

    @pytest_twisted.inlineCallbacks
    def allNodes() -> Any:
        s = yield status(statusPort)
        return len(s["cluster"].get("nodes", [])) == count

    yield waitFor(allNodes, 20, f"{count} workers in the cluster")
    return proc, port, statusPort


@pytest_twisted.inlineCallbacks
def test_twoWorkersShareOnePortPushAndPresence() -> Any:
    redis = yield RedisServer.start()
    procs = Processes()
    clients = []
    try:
        proc, port, statusPort = yield startWorkers(procs, redis.port, 2)
        for i in range(40):
            f = client(f"dev-{i:02d}", [f"127.0.0.1:{port}"])
            f.connect()
            clients.append(f)
        yield waitFor(
            lambda: succeed(all(connectedTo(f) for f in clients)), 20, "clients to connect"
        )

        @pytest_twisted.inlineCallbacks
        def everyoneListed() -> Any:
            s = yield status(statusPort)
            return len(s["cluster"]["connections"]) == 40

        yield waitFor(everyoneListed, 10, "presence of 40 clients")
        s = yield status(statusPort)
        byNode = {n["name"]: n["clients"] for n in s["cluster"]["nodes"]}
        # The kernel spreads the connections over both processes.
        assert set(byNode) == {"w", "w-1"} and all(byNode.values()), byNode
        pids = {n["name"]: n["pid"] for n in s["cluster"]["nodes"]}
        assert pids["w"] == proc.transport.pid and pids["w-1"] != pids["w"]
        # Push to every client through the first process's status endpoint.
        for i in range(len(clients)):
            code, answer = yield post(statusPort, f"/push/dev-{i:02d}", b"hi %d" % i)
            assert code == 200, answer
        yield waitFor(lambda: succeed(all(f.received for f in clients)), 10, "the pushes")
        assert [f.received for f in clients] == [[b"hi %d" % i] for i in range(40)]
        code, answer = yield post(statusPort, "/broadcast", b"all")
        assert (code, answer) == (200, {"delivered": 40})

        # A worker killed: restarted, its clients back (sessions resumed).
        os.kill(pids["w-1"], 9)

        @pytest_twisted.inlineCallbacks
        def restarted() -> Any:
            s = yield status(statusPort)
            nodes = {n["name"]: n["pid"] for n in s["cluster"]["nodes"]}
            return (
                nodes.get("w-1") not in (None, pids["w-1"])
                and len(s["cluster"]["connections"]) == 40
            )

        yield waitFor(restarted, 15, "the worker to be restarted and every client back")
        assert "Worker 1 exited" in procs.log("workers")

        # Stopping the first process stops the others.
        s = yield status(statusPort)
        worker = {n["name"]: n["pid"] for n in s["cluster"]["nodes"]}["w-1"]
        stopClients(clients)
        proc.signal("TERM")
        code = yield proc.ended
        assert code == 0
        yield waitFor(lambda: succeed(not alive(worker)), 5, "the worker to exit")
        assert "Traceback" not in procs.log("workers")
    finally:
        stopClients(clients)
        yield deferLater(reactor, 0.1, lambda: None)
        yield procs.cleanup()
        redis.stop()


@pytest_twisted.inlineCallbacks
def test_killingTheFirstProcessTakesTheWorkersWithIt() -> Any:
    redis = yield RedisServer.start()
    procs = Processes()
    try:
        proc, port, statusPort = yield startWorkers(procs, redis.port, 3)
        s = yield status(statusPort)
        workers = [n["pid"] for n in s["cluster"]["nodes"] if n["name"] != "w"]
        assert len(workers) == 2
        proc.signal("KILL")
        yield proc.ended
        yield waitFor(
            lambda: succeed(not any(alive(pid) for pid in workers)), 10, "the workers to exit"
        )
    finally:
        yield procs.cleanup()
        redis.stop()
