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
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.abspath(__file__)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
            print(json.dumps({"elapsed": elapsed, "cpu": cpu()}), flush=True)
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
    elif kind == "resume":
        from twisted_keepalive.server import KeepaliveServerFactory, ServerProtocol

        class Sequenced(ServerProtocol):
            def messageReceived(self, message: bytes) -> None:
                got()

        # Buffers as large as the run: the cost measured is numbering,
        # storing and acknowledging, not the overflow policy.
        factory = KeepaliveServerFactory(
            HeartbeatConfig(), sessionBuffer=count + 1, sessionBytes=1 << 40
        )
        factory.protocol = Sequenced
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
            Pump(self.sendMessage, self, self.finish).go()

        def finish(self) -> None:
            # In a session, close once everything is acknowledged: closing
            # with the receiver's ACKs still coming would make our kernel
            # answer them with a reset, and a reset discards what the
            # receiver has not read yet.
            if self.session is not None and len(self.session):
                reactor.callLater(0.01, self.finish)  # type: ignore[attr-defined]
            else:
                self.transport.loseConnection()

        def connectionClosed(self, reason: Any) -> None:
            reactor.callLater(0, reactor.stop)  # type: ignore[attr-defined]

    factory = ClientFactory()
    factory.protocol = Baseline if kind == "baseline" else Ours  # type: ignore[assignment]
    factory.heartbeatConfig = HeartbeatConfig()  # type: ignore[attr-defined]
    if kind == "resume":
        from twisted_keepalive.session import Session

        factory.resumeSession = Session(  # type: ignore[attr-defined]
            os.urandom(16), maxMessages=count + 1, maxBytes=1 << 40
        )
    reactor.connectTCP("127.0.0.1", port, factory)  # type: ignore[attr-defined]
    started = cpu()
    reactor.run()  # type: ignore[attr-defined]
    print(json.dumps({"cpu": cpu() - started}), flush=True)


def once(kind: str, count: int, size: int) -> dict[str, float]:
    recv = subprocess.Popen(
        [sys.executable, HERE, "--role", "receiver", "--kind", kind, "--count", str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert recv.stdout is not None
    port = json.loads(recv.stdout.readline())["port"]
    argv = [sys.executable, HERE, "--role", "sender", "--kind", kind, "--count", str(count)]
    argv += ["--size", str(size), "--port", str(port)]
    send = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert send.stdout is not None
    result = json.loads(recv.stdout.readline())
    sent = json.loads(send.stdout.readline())
    recv.wait(timeout=60)
    send.wait(timeout=60)
    return {
        "rate": count / float(result["elapsed"]),
        "recvCpu": float(result["cpu"]) / count * 1e9,  # ns per message, whole process
        "sendCpu": float(sent["cpu"]) / count * 1e9,
    }


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
    rows = run(args.count, args.runs)
    header = ("size", "baseline msg/s", "ours msg/s", "ratio", "resume ratio", "send CPU ratio")
    print("  ".join(f"{h:>14}" for h in header))
    for r in rows:
        print("  ".join(f"{r[h]!s:>14}" for h in header))
    print(json.dumps(rows))


def run(count: int, runs: int) -> list[dict[str, Any]]:
    """Both sizes, C{runs} interleaved runs each; medians and ratios."""
    rows = []
    for size, n in ((100, count), (65_536, max(2_000, count // 25))):
        samples: dict[str, list[dict[str, float]]] = {"baseline": [], "ours": [], "resume": []}
        for _ in range(runs):
            for kind in samples:  # interleaved: noise hits all alike
                samples[kind].append(once(kind, n, size))

        def median(
            kind: str, key: str, samples: dict[str, list[dict[str, float]]] = samples
        ) -> float:
            return statistics.median(r[key] for r in samples[kind])

        base, ours = median("baseline", "rate"), median("ours", "rate")
        resume = median("resume", "rate")
        rows.append(
            {
                "size": size,
                "messages": n,
                "baseline msg/s": round(base),
                "ours msg/s": round(ours),
                "ratio": round(ours / base, 3),
                # Sessions (exactly once across reconnects) against the same
                # protocol without them.
                "resume msg/s": round(resume),
                "resume ratio": round(resume / ours, 3),
                # CPU per message: stable on a noisy machine, where throughput is not.
                "send CPU ratio": round(
                    median("ours", "sendCpu") / median("baseline", "sendCpu"), 3
                ),
                "recv CPU ratio": round(
                    median("ours", "recvCpu") / median("baseline", "recvCpu"), 3
                ),
            }
        )
    return rows


if __name__ == "__main__":
    main()
