"""
Data-path throughput: HeartbeatProtocol against Int32StringReceiver (the
same 4-byte length framing, no heartbeat), between two processes on
127.0.0.1, measured in the same run.

    python bench/datapath.py [--count 500000] [--runs 5]

For each message size (100 B and 64 KiB), each protocol, and each run: a
receiver process counts messages; a sender process writes them as fast as
the transport accepts (pausing when Twisted's producer API says its buffer
is full).  Throughput is taken at the receiver, from first to last message.
Prints the median messages/s and MB/s and the ratio ours / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.abspath(__file__)


def receiver(kind: str, count: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, ServerFactory
    from twisted.protocols.basic import Int32StringReceiver

    from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol

    state = {"n": 0, "first": 0.0}

    def got() -> None:
        n = state["n"] = state["n"] + 1
        if n == 1:
            state["first"] = time.perf_counter()
        elif n == count:
            elapsed = time.perf_counter() - state["first"]
            print(json.dumps({"elapsed": elapsed}), flush=True)
            reactor.callLater(0, reactor.stop)  # type: ignore[attr-defined]

    class Baseline(Int32StringReceiver):
        MAX_LENGTH = 1 << 20

        def stringReceived(self, string: bytes) -> None:
            got()

    class Ours(HeartbeatProtocol):
        def messageReceived(self, message: bytes) -> None:
            got()

    factory: Any
    if kind == "baseline":
        factory = Factory.forProtocol(Baseline)
    else:
        factory = ServerFactory()
        factory.protocol = Ours
        factory.heartbeatConfig = HeartbeatConfig()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(json.dumps({"port": port.getHost().port}), flush=True)
    reactor.run()  # type: ignore[attr-defined]


def sender(kind: str, port: int, count: int, size: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.protocol import ClientFactory
    from twisted.protocols.basic import Int32StringReceiver
    from zope.interface import implementer

    from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol

    message = b"m" * size
    batch = max(1, 262_144 // (size + 6))

    @implementer(IPushProducer)
    class Pump:
        def __init__(self, send: Any, consumer: Any, finish: Any) -> None:
            self.send, self.consumer, self.finish = send, consumer, finish
            self.sent = 0
            self.paused = False
            consumer.registerProducer(self, True)

        def go(self) -> None:
            while not self.paused and self.sent < count:
                for _ in range(min(batch, count - self.sent)):
                    self.send(message)
                self.sent += min(batch, count - self.sent)
                if not self.paused and self.sent < count:
                    reactor.callLater(0, self.go)  # type: ignore[attr-defined]
                    return
            if self.sent >= count:
                self.consumer.unregisterProducer()
                self.finish()

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            self.go()

        def stopProducing(self) -> None:
            self.paused = True

    class Baseline(Int32StringReceiver):
        def connectionMade(self) -> None:
            Pump(self.sendString, self.transport, self.transport.loseConnection).go()

        def connectionLost(self, reason: Any = None) -> None:
            reactor.callLater(0, reactor.stop)  # type: ignore[attr-defined]

    class Ours(HeartbeatProtocol):
        def handshakeCompleted(self) -> None:
            # The transport's producer slot is the protocol's own (it bounds
            # its output); application producers register with the protocol.
            Pump(self.sendMessage, self, self.transport.loseConnection).go()

        def connectionClosed(self, reason: Any) -> None:
            reactor.callLater(0, reactor.stop)  # type: ignore[attr-defined]

    factory = ClientFactory()
    factory.protocol = Baseline if kind == "baseline" else Ours  # type: ignore[assignment]
    factory.heartbeatConfig = HeartbeatConfig()  # type: ignore[attr-defined]
    reactor.connectTCP("127.0.0.1", port, factory)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def once(kind: str, count: int, size: int) -> float:
    recv = subprocess.Popen(
        [sys.executable, HERE, "--role", "receiver", "--kind", kind, "--count", str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert recv.stdout is not None
    port = json.loads(recv.stdout.readline())["port"]
    send = subprocess.Popen(
        [
            sys.executable,
            HERE,
            "--role",
            "sender",
            "--kind",
            kind,
            "--count",
            str(count),
            "--size",
            str(size),
            "--port",
            str(port),
        ]
    )
    result = json.loads(recv.stdout.readline())
    recv.wait(timeout=60)
    send.wait(timeout=60)
    return count / float(result["elapsed"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="main")
    parser.add_argument("--kind", default="ours")
    parser.add_argument("--count", type=int, default=500_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.role == "receiver":
        receiver(args.kind, args.count)
        return
    if args.role == "sender":
        sender(args.kind, args.port, args.count, args.size)
        return
    rows = []
    for size, count in ((100, args.count), (65_536, max(2_000, args.count // 25))):
        rates: dict[str, list[float]] = {"baseline": [], "ours": []}
        for _ in range(args.runs):
            for kind in ("baseline", "ours"):  # interleaved: noise hits both alike
                rates[kind].append(once(kind, count, size))
        base = statistics.median(rates["baseline"])
        ours = statistics.median(rates["ours"])
        rows.append(
            {
                "size": size,
                "messages": count,
                "baseline msg/s": round(base),
                "ours msg/s": round(ours),
                "baseline MB/s": round(base * size / 1e6, 1),
                "ours MB/s": round(ours * size / 1e6, 1),
                "ratio": round(ours / base, 3),
            }
        )
    print(
        f"{'size':>6} {'baseline msg/s':>15} {'ours msg/s':>11} {'MB/s base':>9} "
        f"{'MB/s ours':>9} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['size']:>6} {r['baseline msg/s']:>15} {r['ours msg/s']:>11} "
            f"{r['baseline MB/s']:>9} {r['ours MB/s']:>9} {r['ratio']:>6}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
