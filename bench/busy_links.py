"""
Busy links: while application traffic flows, a heartbeat should cost
nothing: no PING on the wire and no timer touched per message.

    python bench/busy_links.py [--connections 1000] [--seconds 10] [--rate 10]

Each of N connections sends a small message every 1/rate seconds (rate
above the 1 s heartbeat interval) and the server echoes it.  Server and
clients run in separate processes; each process counts, over the measured
window, the PINGs it sent and its timer operations: C{callLater} calls and
C{DelayedCall.reset} calls, wrapped at the reactor.  Two stacks in the same
run:

 - C{ours}: C{KeepaliveServerFactory} and C{HeartbeatProtocol} clients
   (interval 1 s, timeout 3 s);
 - C{stock}: C{Int32StringReceiver} + C{TimeoutMixin} (reset per message)
   + a C{LoopingCall} ping per connection on the server.

The clients' send loop is one shared C{LoopingCall} per process in both
stacks; its own ticks are subtracted from the client's count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from _common import Child, raiseFileLimit, say, serveCommands

INTERVAL = 1.0
TIMEOUT = 3.0
KINDS = ("stock", "ours")


def countTimers() -> dict[str, int]:
    """Wrap the reactor's callLater and DelayedCall.reset with counters."""
    from twisted.internet import base, reactor

    counts = {"callLater": 0, "reset": 0}
    callLater = reactor.callLater  # type: ignore[attr-defined]
    reset = base.DelayedCall.reset

    def countedCallLater(*a: Any, **kw: Any) -> Any:
        counts["callLater"] += 1
        return callLater(*a, **kw)

    def countedReset(self: Any, secondsFromNow: float) -> None:
        counts["reset"] += 1
        reset(self, secondsFromNow)

    reactor.callLater = countedCallLater  # type: ignore[attr-defined]
    base.DelayedCall.reset = countedReset  # type: ignore[method-assign]
    return counts


def server(kind: str) -> None:
    raiseFileLimit(20_000)
    counts = countTimers()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    state = {"messages": 0, "pings": 0}
    protocols: list[Any] = []
    factory: Any
    if kind == "stock":
        from twisted.internet.task import LoopingCall
        from twisted.protocols.basic import Int32StringReceiver
        from twisted.protocols.policies import TimeoutMixin

        class Stock(Int32StringReceiver, TimeoutMixin):
            def connectionMade(self) -> None:
                self.setTimeout(TIMEOUT)
                self.pinger = LoopingCall(self.ping)
                self.pinger.clock = reactor  # the counted callLater
                self.pinger.start(INTERVAL, now=False)

            def ping(self) -> None:
                state["pings"] += 1
                self.sendString(b"ping")

            def stringReceived(self, string: bytes) -> None:
                self.resetTimeout()
                if string != b"pong":
                    state["messages"] += 1
                    self.sendString(string)

            def timeoutConnection(self) -> None:
                self.transport.abortConnection()

            def connectionLost(self, reason: Any = None) -> None:
                self.pinger.stop()
                self.setTimeout(None)

        factory = Factory.forProtocol(Stock)
    else:
        from twisted_keepalive import HeartbeatConfig
        from twisted_keepalive.server import KeepaliveServerFactory, ServerProtocol

        class Echo(ServerProtocol):
            def connectionMade(self) -> None:
                super().connectionMade()
                protocols.append(self)

            def messageReceived(self, message: bytes) -> None:
                state["messages"] += 1
                self.sendMessage(message)

        # Sized for its fleet: the handshake pool (256 by default) would
        # crowd out clients that all connect at once (docs/tuning.md).
        factory = KeepaliveServerFactory(
            HeartbeatConfig(interval=INTERVAL, timeout=TIMEOUT), maxHandshaking=20_000
        )
        factory.protocol = Echo

    def mark() -> dict[str, int]:
        if kind == "ours":
            state["pings"] = sum(p.stats.pingsSent for p in protocols)
        return {**state, **counts}

    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)  # type: ignore[attr-defined]
    say({"port": port.getHost().port})
    serveCommands({"mark": mark})
    reactor.run()  # type: ignore[attr-defined]


def client(kind: str, port: int, count: int, rate: float) -> None:
    raiseFileLimit(20_000)
    counts = countTimers()
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory
    from twisted.internet.task import LoopingCall
    from twisted.protocols.basic import Int32StringReceiver

    from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol

    state = {"echoes": 0, "pings": 0, "ticks": 0}
    ready: list[Any] = []
    message = b"m" * 100

    def isReady(p: Any) -> None:
        ready.append(p)
        if len(ready) == count:
            say({"ready": count})

    class Stock(Int32StringReceiver):
        def connectionMade(self) -> None:
            isReady(self)

        def send(self) -> None:
            self.sendString(message)

        def stringReceived(self, string: bytes) -> None:
            if string == b"ping":
                self.sendString(b"pong")
            else:
                state["echoes"] += 1

    class Ours(HeartbeatProtocol):
        def send(self) -> None:
            self.sendMessage(message)

        def handshakeCompleted(self) -> None:
            isReady(self)

        def messageReceived(self, message: bytes) -> None:
            state["echoes"] += 1

    factory = ClientFactory.forProtocol(Stock if kind == "stock" else Ours)
    factory.heartbeatConfig = HeartbeatConfig(interval=INTERVAL, timeout=TIMEOUT)  # type: ignore[attr-defined]
    for _ in range(count):
        reactor.connectTCP("127.0.0.1", port, factory)  # type: ignore[attr-defined]

    # Every connection sends once per 1/rate s, spread over 10 slots.
    slots = 10
    tick = {"n": 0}

    def sendSlice() -> None:
        state["ticks"] += 1  # the send loop's own timer: not the heartbeat's
        n = tick["n"] = (tick["n"] + 1) % slots
        for p in ready[n::slots]:
            p.send()

    loop = LoopingCall(sendSlice)
    loop.clock = reactor
    loop.start(1 / rate / slots, now=False)

    def mark() -> dict[str, int]:
        if kind == "ours":
            state["pings"] = sum(p.stats.pingsSent for p in ready)
        return {**state, **counts}

    serveCommands({"mark": mark})
    reactor.run()  # type: ignore[attr-defined]


def measure(kind: str, connections: int, seconds: float, rate: float) -> dict[str, Any]:
    srv = Child("busy_links.py", "--role", "server", "--kind", kind)
    cli: Child | None = None
    try:
        port = srv.read()["port"]
        argv = ("--role", "client", "--kind", kind, "--port", str(port), "--rate", str(rate))
        cli = Child("busy_links.py", *argv, "--connections", str(connections))
        cli.read()  # ready
        time.sleep(INTERVAL)
        s0, c0 = srv.ask("mark"), cli.ask("mark")
        time.sleep(seconds)
        s1, c1 = srv.ask("mark"), cli.ask("mark")
    finally:
        if cli is not None:
            cli.stop()
        srv.stop()
    messages = s1["messages"] - s0["messages"]
    timerOps = {
        side: (b["callLater"] - a["callLater"]) + (b["reset"] - a["reset"])
        for side, a, b in (("server", s0, s1), ("client", c0, c1))
    }
    timerOps["client"] -= c1["ticks"] - c0["ticks"]
    return {
        "messages": messages,
        "echoes": c1["echoes"] - c0["echoes"],
        "serverPings": s1["pings"] - s0["pings"],
        "clientPings": c1["pings"] - c0["pings"],
        "serverTimerOps": timerOps["server"],
        "clientTimerOps": timerOps["client"],
        "serverTimerOpsPerMessage": round(timerOps["server"] / max(messages, 1), 4),
        "clientTimerOpsPerMessage": round(timerOps["client"] / max(messages, 1), 4),
        "clientTimerOpsPerConnectionSecond": round(timerOps["client"] / connections / seconds, 3),
    }


def run(connections: int, seconds: float, rate: float) -> dict[str, Any]:
    result: dict[str, Any] = {"connections": connections, "seconds": seconds, "rate": rate}
    for kind in KINDS:
        result[kind] = measure(kind, connections, seconds, rate)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="main")
    parser.add_argument("--kind", default="ours", choices=KINDS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=10.0)
    args = parser.parse_args()
    if args.role == "server":
        server(args.kind)
    elif args.role == "client":
        client(args.kind, args.port, args.connections, args.rate)
    else:
        json.dump(run(args.connections, args.seconds, args.rate), sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
