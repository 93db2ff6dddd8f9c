"""
The adaptive interval against a NAT: a client (interval 5 s, timeout 15 s,
adaptive up to 120 s) reaches a server through FaultProxy's NAT mode (a
flow idle for 30 s is forgotten, no FIN, no RST).  Measured: how long the
client takes to learn, how many deaths learning costs, then over a soak
(10 minutes) the heartbeats per hour against the minimum (3600 / NAT
timeout) and the false deaths (target: 0).

    python bench/adaptive.py [--nat 30] [--interval 5] [--soak 600]

Real time: about NAT x 8 to learn, plus the soak.  Use --nat 3 --interval
0.5 --soak 60 for the same run at a tenth of the scale.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def run(nat: float = 30.0, interval: float = 5.0, soak: float = 600.0) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import deferLater

    from twisted_keepalive import HeartbeatConfig
    from twisted_keepalive.backoff import jitteredBackoff
    from twisted_keepalive.client import KeepaliveClientFactory
    from twisted_keepalive.server import KeepaliveServerFactory
    from twisted_keepalive.testing import FaultProxy

    result: dict[str, Any] = {"nat": nat, "interval": interval, "soak": soak}
    server = KeepaliveServerFactory(HeartbeatConfig(interval=interval, timeout=10 * nat))
    port = reactor.listenTCP(0, server, interface="127.0.0.1")  # type: ignore[attr-defined]
    proxy = FaultProxy("127.0.0.1", port.getHost().port)
    proxy.nat(nat)
    client = KeepaliveClientFactory(
        HeartbeatConfig(interval=interval, timeout=3 * interval, adaptiveInterval=4 * nat),
        servers=[f"127.0.0.1:{proxy.listen()}"],
        retryPolicy=jitteredBackoff(initialDelay=0.1, maxDelay=1.0),
    )
    adaptive = client.adaptive
    assert adaptive is not None

    @inlineCallbacks
    def main() -> Any:
        client.connect()
        started = time.monotonic()
        while adaptive.learning and time.monotonic() - started < 40 * nat:
            yield deferLater(reactor, interval / 10, lambda: None)
        result["learned_interval"] = round(adaptive.current, 3)
        result["learning_seconds"] = round(time.monotonic() - started, 1)
        result["learning_deaths"] = adaptive.deaths
        deaths, connections = adaptive.deaths, proxy.accepted
        seen = server.connections.copy()
        pingsBefore = sum(p.pingsReceived for p in _cores(server))
        yield deferLater(reactor, soak, lambda: None)
        received = sum(p.pingsReceived for p in _cores(server)) - pingsBefore
        result["false_deaths_in_soak"] = adaptive.deaths - deaths + (proxy.accepted - connections)
        result["same_connection"] = server.connections == seen
        perHour = received * 3600 / soak
        result["heartbeats_per_hour"] = round(perHour, 1)
        result["minimum_per_hour"] = round(3600 / nat, 1)
        result["ratio_to_minimum"] = round(perHour / (3600 / nat), 3)
        result["fixed_interval_per_hour"] = round(3600 / interval, 1)
        client.stopTrying()
        yield deferLater(reactor, 0.1, lambda: None)
        yield proxy.stop()
        yield port.stopListening()

    def finish(outcome: object) -> None:
        if hasattr(outcome, "getTraceback"):
            result["error"] = outcome.getTraceback()  # type: ignore[union-attr]
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: main().addBoth(finish))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return result


def runInChild(nat: float, interval: float, soak: float) -> dict[str, Any]:
    """L{run} in a process of its own (a reactor runs once per process)."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--nat",
            str(nat),
            "--interval",
            str(interval),
            "--soak",
            str(soak),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _cores(server: Any) -> list[Any]:
    return [p.core for p in server.connections if p.core is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nat", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--soak", type=float, default=600.0)
    args = parser.parse_args()
    print(json.dumps(run(args.nat, args.interval, args.soak), indent=1))


if __name__ == "__main__":
    main()
