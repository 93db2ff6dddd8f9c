"""
Detection latency: from the moment a link starts dropping every packet (a
blackhole, both ways, no FIN, no RST) to the moment the client aborts it.

    python bench/detection.py [--trials 100] [--interval 1.0] [--timeout 3.0]

Each trial is a client connected to one server through its own FaultProxy
on 127.0.0.1; the trials run side by side, each blackholed at a random
moment within an interval of the others so that the blackhole lands at
every phase of the ping cycle.  The bound: the client aborts C{timeout}
after the last byte it received, which came at or before the blackhole, so
the latency is at most C{timeout} (plus the reactor's scheduling) and at
least C{timeout - interval} (the last PONG came at most an interval
earlier).  For comparison, the operating system's own keepalive as this
machine is configured (/proc/sys/net/ipv4/tcp_keepalive_*).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater, react

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol, HeartbeatTimeout, Role
from twisted_keepalive.testing import FaultProxy


def osKeepalive() -> dict[str, float]:
    """The kernel's defaults: idle time, probe interval, probe count (Linux)."""
    values = {}
    for name, default in (("time", 7200), ("intvl", 75), ("probes", 9)):
        try:
            with open(f"/proc/sys/net/ipv4/tcp_keepalive_{name}") as f:
                values[name] = float(f.read())
        except OSError:
            values[name] = float(default)
    values["detection"] = values["time"] + values["intvl"] * values["probes"]
    return values


class Client(HeartbeatProtocol):
    def __init__(self, config: HeartbeatConfig) -> None:
        super().__init__(config, role=Role.CLIENT)
        self.ready: Deferred[None] = Deferred()
        self.gone: Deferred[Any] = Deferred()

    def handshakeCompleted(self) -> None:
        self.ready.callback(None)

    def connectionClosed(self, reason: Any) -> None:
        self.gone.callback(reason.value)


def percentile(sorted_: list[float], p: float) -> float:
    return sorted_[min(len(sorted_) - 1, round(p / 100 * (len(sorted_) - 1)))]


async def trials(reactor: Any, count: int, interval: float, timeout: float) -> dict[str, Any]:
    factory = ServerFactory()
    factory.protocol = HeartbeatProtocol
    factory.heartbeatConfig = HeartbeatConfig(interval=interval, timeout=timeout)  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    proxies = [FaultProxy("127.0.0.1", port.getHost().port) for _ in range(count)]
    rng = random.Random(1)
    latencies: list[float] = []
    wrongReason = 0

    async def one(proxy: FaultProxy) -> None:
        nonlocal wrongReason
        client = Client(HeartbeatConfig(interval=interval, timeout=timeout))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.listen())
        await connectProtocol(endpoint, client)
        await client.ready
        # Settle into the ping cycle, then cut at a random phase of it.
        await deferLater(reactor, 2 * interval + rng.random() * interval, lambda: None)
        proxy.propagateClose = False
        proxy.blackhole()
        cut = reactor.seconds()
        reason = await client.gone
        latencies.append(reactor.seconds() - cut)
        if not isinstance(reason, HeartbeatTimeout):
            wrongReason += 1

    try:
        await gatherResults([Deferred.fromCoroutine(one(p)) for p in proxies])
    finally:
        await gatherResults([p.stop() for p in proxies])
        await port.stopListening()
    latencies.sort()
    os = osKeepalive()
    worst = latencies[-1]
    return {
        "trials": count,
        "interval": interval,
        "timeout": timeout,
        "min": round(latencies[0], 3),
        "median": round(percentile(latencies, 50), 3),
        "p95": round(percentile(latencies, 95), 3),
        "p99": round(percentile(latencies, 99), 3),
        "max": round(worst, 3),
        "bound": timeout,
        "overBound": sum(1 for x in latencies if x > timeout),
        "overBoundBy": round(max(0.0, worst - timeout), 3),
        "notHeartbeatTimeout": wrongReason,
        "osKeepaliveSeconds": os["detection"],
        "osOverOurs": round(os["detection"] / worst),
    }


def run(count: int, interval: float, timeout: float) -> dict[str, Any]:
    """Run in a fresh process (the reactor runs once per process)."""
    import subprocess

    argv = [sys.executable, __file__, "--trials", str(count)]
    argv += ["--interval", str(interval), "--timeout", str(timeout)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()

    async def go(reactor: Any) -> None:
        result = await trials(reactor, args.trials, args.interval, args.timeout)
        print(json.dumps(result))

    react(lambda reactor: Deferred.fromCoroutine(go(reactor)))


if __name__ == "__main__":
    main()
