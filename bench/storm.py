"""
Reconnect storm: N clients connected to one server; the server is killed
(SIGKILL: every client sees its connection drop at once), stays down for a
while, and a new server process listens on the same port.  Measured on the
new server: when each client completes its handshake.

    python bench/storm.py [--clients 5000] [--down 5.0] [--jitters none,full,...]

For each jitter policy (exponential growth, initial delay 0.1 s, max delay
2 s): the time from the restart until every client is back, the connections
per 100 ms bucket (peak and mean over the reconnect window, from the first
to the last reconnection), and the longest wait after the restart, to set
against the policy's max delay plus one heartbeat interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from _common import Child, raiseFileLimit, say, serveCommands

JITTERS = ("none", "full", "equal", "decorrelated")
INITIAL = 0.1
MAX_DELAY = 2.0
INTERVAL = 1.0
BUCKET = 0.1
#: The kernel caps it at net.core.somaxconn (4096 here); a storm needs it deep.
BACKLOG = 4096
CLIENT_PROCESSES = 2


def server(port: int) -> None:
    """Wait for C{listen}, then listen on C{port} and time each handshake."""
    raiseFileLimit(20_000)
    from twisted.internet import reactor

    from twisted_keepalive import HeartbeatConfig
    from twisted_keepalive.server import KeepaliveServerFactory

    arrivals: list[float] = []

    class Timed(KeepaliveServerFactory):
        def clientConnected(self, protocol: Any) -> None:
            arrivals.append(time.time())

    # The handshake pool sized for the fleet (5,000 clients come back at once).
    factory = Timed(HeartbeatConfig(interval=INTERVAL, timeout=3 * INTERVAL), maxHandshaking=20_000)
    listening: dict[str, Any] = {}

    def listen() -> dict[str, Any]:
        p = reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=BACKLOG)  # type: ignore[attr-defined]
        listening["at"] = time.time()
        return {"port": p.getHost().port, "at": listening["at"]}

    say({"started": True})
    serveCommands(
        {
            "listen": listen,
            "count": lambda: {"count": len(arrivals)},
            "arrivals": lambda: {"arrivals": arrivals},
        }
    )
    reactor.run()  # type: ignore[attr-defined]


def client(port: int, count: int, jitter: str) -> None:
    raiseFileLimit(20_000)
    from twisted.internet import reactor

    from twisted_keepalive import HeartbeatConfig
    from twisted_keepalive.backoff import jitteredBackoff
    from twisted_keepalive.client import ClientState, KeepaliveClientFactory

    state = {"ready": 0, "handshakes": 0}

    class Counted(KeepaliveClientFactory):
        def heartbeatConnectionReady(self, protocol: Any) -> None:
            super().heartbeatConnectionReady(protocol)
            state["handshakes"] += 1
            if state["handshakes"] == count:
                say({"ready": count})

    factories = []
    attempts: list[float] = []

    def observe(old: Any, new: Any) -> None:
        if new is ClientState.CONNECTING:
            attempts.append(time.time())

    for _ in range(count):
        policy = jitteredBackoff(initialDelay=INITIAL, maxDelay=MAX_DELAY, jitter=jitter)
        factories.append(
            Counted(
                HeartbeatConfig(interval=INTERVAL, timeout=3 * INTERVAL),
                retryPolicy=policy,
                servers=[f"127.0.0.1:{port}"],
                stableAfter=0.5,
                connectTimeout=10.0,
            )
        )
    for f in factories:
        f.addStateObserver(observe)
    pending = iter(factories)

    def connectSome() -> None:
        for _ in range(100):
            f = next(pending, None)
            if f is None:
                return
            f.connect()
        reactor.callLater(0.02, connectSome)  # type: ignore[attr-defined]

    connectSome()
    serveCommands({"attempts": lambda: {"attempts": attempts}})
    reactor.run()  # type: ignore[attr-defined]


def measure(count: int, jitter: str, down: float) -> dict[str, Any]:
    first = Child("storm.py", "--role", "server", "--port", "0")
    second: Child | None = None
    clients: list[Child] = []
    try:
        first.read()
        port = first.ask("listen")["port"]
        share = count // CLIENT_PROCESSES
        for i in range(CLIENT_PROCESSES):
            n = share if i else count - share * (CLIENT_PROCESSES - 1)
            argv = ("--role", "client", "--port", str(port), "--jitter", jitter)
            clients.append(Child("storm.py", *argv, "--clients", str(n)))
        for c in clients:
            c.read()  # all connected
        second = Child("storm.py", "--role", "server", "--port", str(port))
        second.read()  # imported and waiting: the restart itself is instant
        time.sleep(1.0)  # past stableAfter: the backoff starts from attempt 1
        first.stop()  # SIGKILL
        time.sleep(down)
        restart = second.ask("listen")["at"]
        deadline = time.time() + 10 * MAX_DELAY + 30
        while second.ask("count")["count"] < count and time.time() < deadline:
            time.sleep(0.2)
        arrivals = sorted(second.ask("arrivals")["arrivals"])
        tried = sorted(a - restart for c in clients for a in c.ask("attempts")["attempts"])
    finally:
        for c in clients:
            c.stop()
        first.stop()
        if second is not None:
            second.stop()
    back = [a - restart for a in arrivals]
    if len(back) < count:
        raise RuntimeError(f"only {len(back)} of {count} clients came back ({jitter})")
    # Attempts that reached the listening server: from the restart until the
    # last client was back.  What the policy controls; the server's own
    # handshake rate also bears its scheduling.
    landed = [t for t in tried if 0 <= t <= back[-1]]
    attemptBuckets = histogram(landed, back[-1])
    handshakeBuckets = histogram(back, back[-1])
    return {
        "jitter": jitter,
        "clients": count,
        "allBackAfter": round(back[-1], 3),
        "firstBackAfter": round(back[0], 3),
        "attemptPeakPer100ms": max(attemptBuckets),
        "attemptMeanPer100ms": round(statistics.mean(attemptBuckets), 1),
        "attemptPeakOverMean": round(max(attemptBuckets) / statistics.mean(attemptBuckets), 2),
        "handshakePeakPer100ms": max(handshakeBuckets),
        "handshakePeakOverMean": round(
            max(handshakeBuckets) / statistics.mean(handshakeBuckets), 2
        ),
        "longestWait": round(back[-1], 3),
        "waitBound": MAX_DELAY + INTERVAL,
        "handshakesPer100ms": handshakeBuckets,
    }


def histogram(times: list[float], end: float) -> list[int]:
    """Counts per 100 ms bucket from 0 (the restart) to C{end}."""
    buckets = [0] * (int(end / BUCKET) + 1)
    for t in times:
        buckets[int(t / BUCKET)] += 1
    return buckets


def run(count: int, down: float, jitters: tuple[str, ...] = JITTERS) -> dict[str, Any]:
    return {
        "clients": count,
        "down": down,
        "initialDelay": INITIAL,
        "maxDelay": MAX_DELAY,
        "policies": [measure(count, j, down) for j in jitters],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="main")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--jitter", default="full", choices=JITTERS)
    parser.add_argument("--jitters", default=",".join(JITTERS))
    parser.add_argument("--down", type=float, default=5.0)
    args = parser.parse_args()
    if args.role == "server":
        server(args.port)
    elif args.role == "client":
        client(args.port, args.clients, args.jitter)
    else:
        jitters = tuple(args.jitters.split(","))
        json.dump(run(args.clients, args.down, jitters), sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
