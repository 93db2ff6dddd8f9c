"""
Soak: N clients against one server, each through its own fault proxy on
127.0.0.1, with faults injected at random for a bounded time.

    python bench/soak.py --clients 100 --seconds 600

Every client sends a numbered message every 0.2 s; the server echoes.  Every
--every seconds a random client gets a random fault: a blackhole (both
ways or one way) for 2 to 4 s, longer than the 1.5 s timeout so that each
must be detected; a reset; or 1 to 3 s of added latency or a bandwidth limit,
which a healthy connection must survive.  At the
end: faults injected, detected (blackholes must end in a heartbeat timeout,
resets in a lost connection), recovered, the worst detection latency against
the bound, messages sent, received by the server, lost and duplicated, and
whether every client is connected again.  Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.task import LoopingCall

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import ClientState, KeepaliveClientFactory
from twisted_keepalive.server import KeepaliveServerFactory
from twisted_keepalive.testing import FaultProxy

reactor: Any = _reactor
INTERVAL, TIMEOUT = 0.5, 1.5
FAULTS = ("blackhole", "blackhole-up", "blackhole-down", "reset", "latency", "throttle")


class Server(KeepaliveServerFactory):
    def __init__(self) -> None:
        super().__init__(HeartbeatConfig(interval=1.0, timeout=4.0), maxConnections=10_000)
        self.seen: dict[int, set[int]] = {}
        self.duplicates = 0
        self.received = 0

    def messageReceived(self, protocol: HeartbeatProtocol, message: bytes) -> None:
        client, number = (int(x) for x in message.split(b":"))
        seen = self.seen.setdefault(client, set())
        if number in seen:
            self.duplicates += 1
        seen.add(number)
        self.received += 1
        protocol.sendMessage(message)


@dataclass
class Fault:
    client: int
    kind: str
    at: float
    healedAt: float | None = None
    detectedAfter: float | None = None
    recoveredAfter: float | None = None
    timeoutsBefore: int = 0
    lostBefore: int = 0


@dataclass
class Client:
    index: int
    proxy: FaultProxy
    factory: KeepaliveClientFactory
    sent: int = 0
    echoed: int = 0
    lost: int = 0  # connections lost, whatever the reason
    faults: list[Fault] = field(default_factory=list)


class Echoed(HeartbeatProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.factory.soak.echoed += 1  # type: ignore[union-attr]


class Soak:
    def __init__(self, clients: int, seconds: float, every: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seconds = seconds
        self.every = every
        self.server = Server()
        self.port = reactor.listenTCP(0, self.server, interface="127.0.0.1", backlog=1024)
        self.clients: list[Client] = []
        for i in range(clients):
            proxy = FaultProxy("127.0.0.1", self.port.getHost().port)
            factory = KeepaliveClientFactory(
                HeartbeatConfig(interval=INTERVAL, timeout=TIMEOUT, clientId=f"c{i}"),
                servers=[f"127.0.0.1:{proxy.listen()}"],
                retryPolicy=jitteredBackoff(initialDelay=0.1, maxDelay=1.0, random=self.rng.random),
                stableAfter=1.0,
                connectTimeout=2.0,
                queueSize=100,
            )
            factory.protocol = Echoed
            client = Client(i, proxy, factory)
            factory.soak = client  # type: ignore[attr-defined]
            factory.addStateObserver(self._observer(client))
            self.clients.append(client)
        self.faults: list[Fault] = []
        self.load = LoopingCall(self.tick)
        self.injector = LoopingCall(self.inject)
        self.started = 0.0

    def _observer(self, client: Client) -> Any:
        def changed(old: ClientState, new: ClientState) -> None:
            now = reactor.seconds()
            if old is ClientState.CONNECTED:
                client.lost += 1
            for fault in client.faults:
                # A loss counts as this fault's detection only while it is on.
                if (
                    fault.detectedAfter is None
                    and old is ClientState.CONNECTED
                    and (fault.healedAt is None)
                ):
                    fault.detectedAfter = now - fault.at
                if (
                    new is ClientState.CONNECTED
                    and fault.healedAt is not None
                    and fault.recoveredAfter is None
                ):
                    fault.recoveredAfter = now - fault.healedAt

        return changed

    def tick(self) -> None:
        for c in self.clients:
            try:
                c.factory.sendMessage(b"%d:%d" % (c.index, c.sent))
                c.sent += 1
            except Exception:
                pass  # queue full: not counted as sent

    def inject(self) -> None:
        if reactor.seconds() - self.started > self.seconds - 5:
            return  # leave time to heal and recover
        candidates = [
            c
            for c in self.clients
            if c.factory.state is ClientState.CONNECTED
            and not any(f.healedAt is None for f in c.faults)
        ]
        if not candidates:
            return
        client = self.rng.choice(candidates)
        kind = self.rng.choice(FAULTS)
        fault = Fault(
            client.index,
            kind,
            reactor.seconds(),
            timeoutsBefore=client.factory.heartbeatTimeouts,
            lostBefore=client.lost,
        )
        client.faults.append(fault)
        self.faults.append(fault)
        p = client.proxy
        if kind == "blackhole":
            p.blackhole()
        elif kind == "blackhole-up":
            p.blackhole(clientToServer=True, serverToClient=False)
        elif kind == "blackhole-down":
            p.blackhole(clientToServer=False, serverToClient=True)
        elif kind == "reset":
            p.reset()
        elif kind == "latency":
            p.delay(0.2)
        else:
            p.throttle(20_000)
        # Blackholes outlast the timeout, so each one must be detected.
        low, high = (TIMEOUT + 0.5, TIMEOUT + 2.5) if kind.startswith("blackhole") else (1.0, 3.0)
        reactor.callLater(self.rng.uniform(low, high), self.heal, client, fault)

    def heal(self, client: Client, fault: Fault) -> None:
        client.proxy.restore()
        fault.healedAt = reactor.seconds()
        if client.factory.state is ClientState.CONNECTED and fault.recoveredAfter is None:
            fault.recoveredAfter = 0.0  # never lost it (latency, throttle)

    def start(self) -> None:
        self.started = reactor.seconds()
        for c in self.clients:
            c.factory.connect()
        self.load.start(0.2, now=False)
        self.injector.start(self.every, now=False)
        reactor.callLater(self.seconds, self.finish)

    def finish(self) -> None:
        self.load.stop()
        self.injector.stop()
        reactor.callLater(3.0, self.report)  # let echoes and last recoveries arrive

    def report(self) -> None:
        blackholes = [f for f in self.faults if f.kind.startswith("blackhole")]
        detected = [f for f in blackholes if f.detectedAfter is not None]
        resets = [f for f in self.faults if f.kind == "reset"]
        recovered = [f for f in self.faults if f.recoveredAfter is not None]
        stuck = [c.index for c in self.clients if c.factory.state is not ClientState.CONNECTED]
        sent = sum(c.sent for c in self.clients)
        received = self.server.received
        result = {
            "clients": len(self.clients),
            "seconds": self.seconds,
            "faults injected": len(self.faults),
            "by kind": {k: sum(f.kind == k for f in self.faults) for k in FAULTS},
            "blackholes detected": f"{len(detected)}/{len(blackholes)}",
            "resets detected": f"{sum(f.detectedAfter is not None for f in resets)}/{len(resets)}",
            "recovered": f"{len(recovered)}/{len(self.faults)}",
            "worst blackhole detection s": round(
                max(
                    (f.detectedAfter for f in detected if f.detectedAfter is not None), default=0.0
                ),
                3,
            ),
            "detection bound s": TIMEOUT,
            "worst recovery after heal s": round(
                max(
                    (f.recoveredAfter for f in recovered if f.recoveredAfter is not None),
                    default=0.0,
                ),
                3,
            ),
            # Latency and throttling must not look like death.
            "false alarms": sum(
                f.detectedAfter is not None
                for f in self.faults
                if f.kind in ("latency", "throttle")
            ),
            "messages sent": sent,
            "received by server": received,
            "lost": sent - received,
            "duplicated": self.server.duplicates,
            "stuck clients": stuck,
        }
        print(json.dumps(result, indent=2))
        with open("bench/soak-results.json", "w") as f:
            json.dump(result, f, indent=2)
        self.ok = (
            not stuck and len(detected) == len(blackholes) and len(recovered) == len(self.faults)
        )
        for c in self.clients:
            c.factory.stopTrying()
        reactor.callLater(0.5, reactor.stop)


def main() -> int:
    parser = argparse.ArgumentParser(description="Soak test on 127.0.0.1.")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    soak = Soak(args.clients, args.seconds, args.every, args.seed)
    soak.ok = False
    began = time.monotonic()
    reactor.callWhenRunning(soak.start)
    reactor.run()
    print(f"wall time {time.monotonic() - began:.1f}s; {'PASS' if soak.ok else 'FAIL'}")
    return 0 if soak.ok else 1


if __name__ == "__main__":
    sys.exit(main())
