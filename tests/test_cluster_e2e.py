"""
The cluster end to end: real Redis (tests/redis_server.py), real
C{twistd -n keepconn --cluster} nodes, library and C{--stdio} clients, all
on 127.0.0.1.  Plain functions (pytest runs them; trial skips this module).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import LoopingCall, deferLater

from .cluster_e2e import (
    Node,
    client,
    clusterConnections,
    connectedTo,
    now,
    startNodes,
    stopClients,
)
from .e2e import FAST_CLIENT, Processes, waitFor
from .redis_server import RedisServer

#: Figures for docs/cluster.md, printed with -s.
FIGURES: dict[str, Any] = {}


def sleep(seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_threeNodesPresencePushAndBroadcastFor300Clients() -> Any:
    """
    Done when: 3 nodes, 300 clients spread across them; presence lists all
    300 with their nodes on every node; sendTo from A reaches a client on
    C; a broadcast from B reaches all 300; an unknown client is a clear
    error.
    """
    redis = yield RedisServer.start()
    procs = Processes()
    clients = []
    try:
        nodes = yield startNodes(procs, redis.port, ["A", "B", "C"])
        a, b, c = nodes
        started = now()
        for i in range(300):
            node = nodes[i % 3]
            f = client(f"dev-{i:03d}", [node.address])
            f.connect()
            clients.append(f)
        expected = {f"dev-{i:03d}": nodes[i % 3].name for i in range(300)}
        for node in nodes:
            check = clusterConnections(node)

            @pytest_twisted.inlineCallbacks
            def complete(check: Any = check) -> Any:
                seen = yield check()
                return seen == expected

            yield waitFor(complete, 30, f"node {node.name} to list all 300 clients")
        presenceSeconds = now() - started

        # sendTo: from A to a client on C.
        target = clients[2]  # dev-002 is on C
        t0 = now()
        code, answer = yield a.post("/push/dev-002", b"from A")
        crossNode = now() - t0
        assert (code, answer) == (200, {"node": "C"})
        yield waitFor(lambda: _done(b"from A" in target.received), 5, "the push")
        assert target.received.count(b"from A") == 1

        # The same, to a client on A itself (local).
        t0 = now()
        code, answer = yield a.post("/push/dev-000", b"local")
        local = now() - t0
        assert (code, answer) == (200, {"node": "A"})

        # Unknown client: a clear error.
        code, answer = yield a.post("/push/nobody", b"x")
        assert code == 404 and answer["error"] == "UnknownClient", answer
        assert "nobody" in answer["why"]

        # Broadcast from B reaches all 300, once each.
        code, answer = yield b.post("/broadcast", b"everyone")
        assert (code, answer) == (200, {"delivered": 300})
        yield waitFor(
            lambda: _done(all(b"everyone" in f.received for f in clients)), 10, "the broadcast"
        )
        assert all(f.received.count(b"everyone") == 1 for f in clients)
        FIGURES["presence"] = {
            "nodes": 3,
            "clients": 300,
            "all listed on every node after s": round(presenceSeconds, 2),
            "POST /push across nodes ms": round(crossNode * 1000, 1),
            "POST /push local ms": round(local * 1000, 1),
        }
        print(f"\ncluster presence: {FIGURES['presence']}")
        for node in nodes:
            log = procs.log(node.name)
            assert "Traceback" not in log, log[-3000:]
    finally:
        yield tearDown(procs, redis, clients)


@pytest_twisted.inlineCallbacks
def tearDown(procs: Processes, redis: RedisServer, clients: list[Any], loop: Any = None) -> Any:
    """The traffic, the clients, the nodes, then Redis."""
    if loop is not None and loop.running:
        loop.stop()
    stopClients(clients)
    yield sleep(0.1)
    yield procs.cleanup()
    redis.stop()


def _done(value: bool) -> Any:
    from twisted.internet.defer import succeed

    return succeed(value)


class Numbered:
    """A client's traffic: what it sent, what came back, pushes it got."""

    def __init__(self, factory: Any, cid: str) -> None:
        self.factory = factory
        self.cid = cid
        self.sent = 0

    def send(self) -> None:
        if len(self.factory.queue) < 1000:
            self.sent += 1
            self.factory.sendMessage(b"e%d" % self.sent)

    def echoes(self) -> list[int]:
        return [int(m[1:]) for m in self.factory.received if m.startswith(b"e")]

    def pushes(self) -> list[int]:
        return [int(m[1:]) for m in self.factory.received if m.startswith(b"p")]


@pytest_twisted.inlineCallbacks
def test_killedNodeFailsOverWithoutLossOrDuplicates() -> Any:
    """
    Done when: kill -9 one node during traffic in both directions; its
    clients are on the other nodes within the backoff bound, it leaves
    presence within its TTL, and sessions (library clients and a --stdio
    client) lose and duplicate nothing, either way.
    """
    redis = yield RedisServer.start()
    procs = Processes()
    clients: list[Any] = []
    loop = None
    try:
        nodes = yield startNodes(procs, redis.port, ["A", "B", "C"])
        a, b, c = nodes
        order = [a, b, c]
        for i in range(30):
            first = order[i % 3]
            servers = [first.address] + [n.address for n in order if n is not first]
            f = client(f"dev-{i:02d}", servers)
            f.connect()
            clients.append(Numbered(f, f"dev-{i:02d}"))
        # A --stdio client on A, failing over to B and C.
        stdio = procs.start(
            "stdio",
            "--host",
            a.address,
            "--host",
            b.address,
            "--host",
            c.address,
            "--client-id",
            "pipe",
            "--stdio",
            *FAST_CLIENT,
            logfile=True,
        )
        yield waitFor(
            lambda: _done(all(connectedTo(n.factory) for n in clients)), 20, "clients to connect"
        )
        onA = [n for n in clients if connectedTo(n.factory) == a.address]
        assert len(onA) == 10
        lines = {"sent": 0}
        pushes: dict[str, dict[int, int]] = {n.cid: {} for n in onA}

        def traffic() -> None:
            for n in clients:
                n.send()
            if lines["sent"] < 3000:
                for _ in range(5):
                    lines["sent"] += 1
                    stdio.transport.write(b"line %d\n" % lines["sent"])

        loop = LoopingCall(traffic)
        loop.start(0.02)

        @pytest_twisted.inlineCallbacks
        def pushLoop() -> Any:
            # Pushes from B to the clients on A, before and across the kill.
            for k in range(1, 41):
                for n in onA:
                    cid = n.cid
                    code, _ = yield b.post(f"/push/{cid}", b"p%d" % k)
                    pushes[cid][k] = code
                yield sleep(0.05)

        pushing = pushLoop()
        yield sleep(1.5)
        killedAt = now()
        a.process.signal("KILL")
        yield waitFor(
            lambda: _done(all(connectedTo(n.factory) not in (None, a.address) for n in onA)),
            10,
            "A's clients to fail over",
        )
        failover = now() - killedAt
        check = clusterConnections(b)

        @pytest_twisted.inlineCallbacks
        def aGone() -> Any:
            s = yield b.status()
            return "A" not in [n["name"] for n in s["cluster"]["nodes"]]

        yield waitFor(aGone, 10, "A to leave presence")
        leftPresence = now() - killedAt
        yield pushing
        yield sleep(1.0)
        loop.stop()
        loop = None
        # Everything sent comes back once, in order.
        yield waitFor(
            lambda: _done(all(n.echoes() and n.echoes()[-1] == n.sent for n in clients)),
            20,
            "every echo",
        )
        for n in clients:
            assert n.echoes() == list(range(1, n.sent + 1)), n.cid
        pushedOk = 0
        for n in onA:
            cid = n.cid
            got = Counter(n.pushes())
            assert all(count == 1 for count in got.values()), (cid, got)
            accepted = [k for k, code in pushes[cid].items() if code == 200]
            assert set(accepted) <= set(got), (cid, accepted, sorted(got))
            assert n.pushes() == sorted(n.pushes())  # in order
            pushedOk += len(accepted)
        # The pipe: every line echoed once, in order.
        expected = b"".join(b"line %d\n" % i for i in range(1, lines["sent"] + 1))
        yield waitFor(lambda: _done(bytes(stdio.out) == expected), 20, "the stdio echoes")
        seen = yield check()
        assert set(seen.values()) <= {"B", "C"} and len(seen) == 31, seen
        adopted = 0
        for node in (b, c):
            s = yield node.status()
            adopted += s["cluster"]["sessions_adopted"]
        assert adopted >= 11  # A's 10 library clients and the pipe
        FIGURES["failover"] = {
            "clients on the killed node": len(onA) + 1,
            "all reconnected elsewhere after s": round(failover, 2),
            "left presence after s (TTL 2 s)": round(leftPresence, 2),
            "echoes checked": sum(n.sent for n in clients) + lines["sent"],
            "pushes accepted and delivered once": pushedOk,
            "lost": 0,
            "duplicated": 0,
            "sessions adopted": adopted,
        }
        print(f"\ncluster failover: {FIGURES['failover']}")
    finally:
        yield tearDown(procs, redis, [n.factory for n in clients], loop)


@pytest_twisted.inlineCallbacks
def test_redisRestartKeepsLocalServiceAndRecovers() -> Any:
    """
    Done when: Redis killed and restarted during traffic: local service
    never stops; cross-node push fails fast meanwhile; presence and
    cross-node push recover by themselves; one log line per change.
    """
    redis = yield RedisServer.start()
    procs = Processes()
    clients: list[Any] = []
    loop = None
    try:
        nodes = yield startNodes(procs, redis.port, ["A", "B"])
        a, b = nodes
        for i in range(10):
            f = client(f"dev-{i}", [nodes[i % 2].address])
            f.connect()
            clients.append(Numbered(f, f"dev-{i}"))
        yield waitFor(
            lambda: _done(all(connectedTo(n.factory) for n in clients)), 20, "clients to connect"
        )
        loop = LoopingCall(lambda: [n.send() for n in clients])
        loop.start(0.02)
        yield waitFor(lambda: _done(len(clusterOf(clients)) == 10), 1, "warm up")
        redis.stop()
        killedAt = now()

        @pytest_twisted.inlineCallbacks
        def down(node: Node) -> Any:
            s = yield node.status()
            return s["cluster"]["redis"] == "down"

        for node in nodes:
            yield waitFor(lambda node=node: down(node), 10, f"{node.name} to see Redis down")
        detected = now() - killedAt
        t0 = now()
        code, answer = yield a.post("/push/dev-1", b"across")  # dev-1 is on B
        failFast = now() - t0
        assert code == 503 and answer["error"] == "ClusterUnavailable", answer
        # Local service goes on: echoes keep coming back.
        before = [len(n.echoes()) for n in clients]
        yield sleep(1.0)
        assert all(len(n.echoes()) > k for n, k in zip(clients, before, strict=True))
        code, answer = yield a.post("/push/dev-0", b"local")  # dev-0 is on A
        assert code == 200
        redis = yield redis.restart()
        restartedAt = now()

        @pytest_twisted.inlineCallbacks
        def recovered() -> Any:
            for node in nodes:
                s = yield node.status()
                if s["cluster"]["redis"] != "up" or len(s["cluster"]["connections"]) != 10:
                    return False
            return True

        yield waitFor(recovered, 15, "presence to be rebuilt")
        recovery = now() - restartedAt
        code, answer = yield a.post("/push/dev-1", b"across again")
        assert (code, answer) == (200, {"node": "B"})
        yield waitFor(lambda: _done(b"across again" in clients[1].factory.received), 5, "the push")
        assert b"across" not in clients[1].factory.received
        loop.stop()
        loop = None
        yield waitFor(
            lambda: _done(all(n.echoes()[-1] == n.sent for n in clients)), 10, "every echo"
        )
        for n in clients:
            assert n.echoes() == list(range(1, n.sent + 1))
        for node in nodes:
            log = procs.log(node.name)
            # One line when Redis went, one when it came back (and one at start).
            assert log.count("unreachable") == 1, log[-3000:]
            assert log.count("reachable; node") == 2, log[-3000:]
            assert "Scheduling retry" not in log
            assert "Traceback" not in log, log[-3000:]
        FIGURES["redis restart"] = {
            "down detected after s": round(detected, 2),
            "cross-node push refused in ms": round(failFast * 1000, 1),
            "presence rebuilt after restart s": round(recovery, 2),
            "echoes lost": 0,
        }
        print(f"\ncluster redis restart: {FIGURES['redis restart']}")
    finally:
        yield tearDown(procs, redis, [n.factory for n in clients], loop)


def clusterOf(clients: list[Any]) -> list[Any]:
    return [n for n in clients if n.echoes()]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no Chromium (.ci/run installs Debian's)")
@pytest_twisted.inlineCallbacks
def test_liveViewInHeadlessChromium() -> Any:
    """
    The page at / of a node, loaded by a real browser: it shows both
    nodes, every connection with its node, and the charts.
    """
    redis = yield RedisServer.start()
    procs = Processes()
    clients = []
    profile = tempfile.mkdtemp(prefix="keepconn-chromium-")
    try:
        nodes = yield startNodes(procs, redis.port, ["north", "south"])
        for i in range(6):
            f = client(f"sensor-{i}", [nodes[i % 2].address])
            f.connect()
            clients.append(f)
        check = clusterConnections(nodes[0])

        @pytest_twisted.inlineCallbacks
        def allListed() -> Any:
            seen = yield check()
            return len(seen) == 6

        yield waitFor(allListed, 20, "presence")
        from twisted.internet.threads import deferToThread

        def dump() -> str:
            result = subprocess.run(
                [
                    str(chromium()),
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    "--virtual-time-budget=3000",
                    "--dump-dom",
                    f"http://127.0.0.1:{nodes[0].statusPort}/",
                ],
                capture_output=True,
                timeout=60,
                env={**os.environ, "HOME": profile},
            )
            return result.stdout.decode("utf-8", "replace")

        dom = yield deferToThread(dump)
        assert 'data-loaded="' in dom, dom[:2000]
        assert "2 nodes, 6 connections" in dom, dom[:3000]
        for i in range(6):
            node = ["north", "south"][i % 2]
            assert f"<td>sensor-{i}</td><td>{node}</td>" in dom, dom
        for name in ("gauge_clients", "evictions", "reconnects", "losses"):
            assert f'id="chart-{name}"' in dom
        assert dom.count("<polyline") == 4
        assert '<div id="error" class="bad"></div>' in dom  # Redis up: no warning
    finally:
        yield tearDown(procs, redis, clients)
        shutil.rmtree(profile, ignore_errors=True)
