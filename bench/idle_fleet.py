"""
Idle fleet: the server's CPU per heartbeat round trip and memory per
connection, for N idle connections heartbeating at a 1 s interval.

    python bench/idle_fleet.py [--connections 10000] [--seconds 30] [--runs 3]

Server kinds, each in its own process, loaded by client processes of their
own (the clients' cost is not counted):

 - C{floor}: a bare C{Protocol} that echoes the client's ping bytes: no
   framing, no timer: the least any heartbeat can cost;
 - C{stock}: what users write with stock Twisted: C{Int32StringReceiver} +
   a C{LoopingCall} per connection that pings + C{TimeoutMixin};
 - C{autobahn}: autobahn's WebSocket server with C{autoPingInterval=1},
   C{autoPingTimeout=3};
 - C{ours}: C{KeepaliveServerFactory} (interval 1 s, timeout 3 s).

In C{floor} and C{ours} the clients ping (our protocol's client pings, the
server answers and evicts); in C{stock} and C{autobahn} the server pings and
the clients answer, as those designs do.  Either way one round trip per
connection per second.  CPU is the server process's user + system time over
the measured window divided by the round trips completed in it; memory is
the server's RSS growth from before the first connection to after the last,
per connection.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from typing import Any

from _common import Child, cpu, median, raiseFileLimit, rss, say, serveCommands

KINDS = ("floor", "stock", "autobahn", "ours")
INTERVAL = 1.0
TIMEOUT = 3.0
CLIENT_PROCESSES = 2


def server(kind: str) -> None:
    raiseFileLimit(20_000)
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    factory: Any
    if kind == "floor":

        class Echo(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(data)

        factory = Factory.forProtocol(Echo)
    elif kind == "stock":
        from twisted.internet.task import LoopingCall
        from twisted.protocols.basic import Int32StringReceiver
        from twisted.protocols.policies import TimeoutMixin

        class Stock(Int32StringReceiver, TimeoutMixin):
            def connectionMade(self) -> None:
                self.setTimeout(TIMEOUT)
                self.pinger = LoopingCall(self.sendString, b"ping")
                self.pinger.start(INTERVAL, now=False)

            def stringReceived(self, string: bytes) -> None:
                self.resetTimeout()

            def timeoutConnection(self) -> None:
                self.transport.abortConnection()

            def connectionLost(self, reason: Any = None) -> None:
                self.pinger.stop()
                self.setTimeout(None)

        factory = Factory.forProtocol(Stock)
    elif kind == "autobahn":
        from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        factory.setProtocolOptions(autoPingInterval=INTERVAL, autoPingTimeout=TIMEOUT)
    else:
        from twisted_keepalive import HeartbeatConfig
        from twisted_keepalive.server import KeepaliveServerFactory

        # A server sized for its fleet: 10,000 clients arrive within a
        # second, so its handshake pool (256 by default, against sockets
        # that never speak) is as large as the fleet (docs/tuning.md).
        factory = KeepaliveServerFactory(
            HeartbeatConfig(
                interval=INTERVAL, timeout=TIMEOUT, tcpNoDelay=os.environ.get("NODELAY", "1") == "1"
            ),
            maxHandshaking=20_000,
        )
    before = rss()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)  # type: ignore[attr-defined]
    say({"port": port.getHost().port})
    marks = []

    def mark() -> dict[str, float]:
        # BENCH_PROFILE=file: profile the measured window (between two marks).
        marks.append(cpu())
        if os.environ.get("BENCH_PROFILE"):
            if len(marks) == 1:
                profiler.enable()
            else:
                profiler.disable()
                profiler.dump_stats(os.environ["BENCH_PROFILE"])
        return {"cpu": marks[-1], "rss": rss(), "rss0": before}

    import cProfile

    profiler = cProfile.Profile()
    serveCommands({"mark": mark})
    reactor.run()  # type: ignore[attr-defined]


def client(kind: str, port: int, count: int) -> None:
    """Open C{count} connections and answer/send heartbeats, as cheaply as possible."""
    raiseFileLimit(20_000)
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory, Protocol
    from twisted.internet.task import LoopingCall

    from twisted_keepalive.frames import (
        DEFAULT_MAX_FRAME,
        FrameDecoder,
        FrameType,
        Hello,
        encodeHello,
        encodePing,
    )

    state = {"ready": 0, "roundTrips": 0, "lost": 0}
    pingers: list[Any] = []
    pongHeader = struct.Struct(">IBB")

    def ready() -> None:
        state["ready"] += 1
        settled()

    def settled() -> None:
        # Every connection is up, or failed (counted as lost): never hang.
        if state["ready"] + state["lost"] == count:
            say({"ready": state["ready"], "lost": state["lost"]})

    class Floor(Protocol):
        ping = encodePing(1, 0)

        def connectionMade(self) -> None:
            pingers.append(self)
            ready()

        def sendPing(self) -> None:
            self.transport.write(self.ping)

        def dataReceived(self, data: bytes) -> None:
            state["roundTrips"] += len(data) // len(self.ping)

    class Ours(Protocol):
        hello = encodeHello(Hello(1, INTERVAL, TIMEOUT, DEFAULT_MAX_FRAME))

        def connectionMade(self) -> None:
            self.decoder = FrameDecoder()
            self.transport.write(self.hello)

        def sendPing(self) -> None:
            self.transport.write(encodePing(1, 0))

        def dataReceived(self, data: bytes) -> None:
            for ftype, _flags, payload in self.decoder.feed(data):
                if ftype == FrameType.PONG:
                    state["roundTrips"] += 1
                elif ftype == FrameType.PING:
                    header = pongHeader.pack(len(payload) + 2, FrameType.PONG, 0)
                    self.transport.write(header + payload)
                elif ftype == FrameType.HELLO:
                    pingers.append(self)
                    ready()

    class Stock(Protocol):
        def connectionMade(self) -> None:
            ready()

        def dataReceived(self, data: bytes) -> None:
            n = len(data) // 8  # each b"ping" is 4 + 4 bytes; reply in kind
            state["roundTrips"] += n
            self.transport.write(b"\0\0\0\x04pong" * n)

    class WebSocket(Protocol):
        def connectionMade(self) -> None:
            self.buffer = b""
            self.open = False
            self.transport.write(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )

        def dataReceived(self, data: bytes) -> None:
            buffer = self.buffer + data
            if not self.open:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    self.buffer = buffer
                    return
                self.open = True
                buffer = buffer[end + 4 :]
                ready()
            replies = []
            while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F):
                size = buffer[1] & 0x7F
                if buffer[0] & 0x0F == 0x9:  # ping: answer with a masked pong
                    state["roundTrips"] += 1
                    replies.append(bytes((0x8A, 0x80 | size)) + b"\0\0\0\0" + buffer[2 : 2 + size])
                buffer = buffer[2 + size :]
            self.buffer = buffer
            if replies:
                self.transport.write(b"".join(replies))

        def connectionLost(self, reason: Any = None) -> None:
            state["lost"] += 1

    protocol = {"floor": Floor, "ours": Ours, "stock": Stock, "autobahn": WebSocket}[kind]
    factory = ClientFactory.forProtocol(protocol)

    def clientConnectionFailed(connector: Any, reason: Any) -> None:
        state["lost"] += 1
        settled()

    factory.clientConnectionFailed = clientConnectionFailed  # type: ignore[method-assign]
    opened = 0

    def openSome() -> None:
        nonlocal opened
        for _ in range(min(100, count - opened)):
            reactor.connectTCP("127.0.0.1", port, factory)  # type: ignore[attr-defined]
            opened += 1
        if opened < count:
            reactor.callLater(0.02, openSome)  # type: ignore[attr-defined]

    # Clients that ping spread their pings evenly over the interval.
    slots = 50
    tick = {"n": 0}

    def pingSlice() -> None:
        n = tick["n"] = (tick["n"] + 1) % slots
        for p in pingers[n::slots]:
            p.sendPing()

    LoopingCall(pingSlice).start(INTERVAL / slots, now=False)
    openSome()
    serveCommands({"mark": lambda: dict(state)})
    reactor.run()  # type: ignore[attr-defined]


def measure(kind: str, connections: int, seconds: float) -> dict[str, float]:
    srv = Child("idle_fleet.py", "--role", "server", "--kind", kind)
    clients: list[Child] = []
    try:
        port = srv.read()["port"]
        share = connections // CLIENT_PROCESSES
        for i in range(CLIENT_PROCESSES):
            n = share if i else connections - share * (CLIENT_PROCESSES - 1)
            argv = ("--role", "client", "--kind", kind, "--port", str(port))
            clients.append(Child("idle_fleet.py", *argv, "--connections", str(n)))
        for c in clients:
            c.read()  # {"ready": n}
        time.sleep(2 * INTERVAL)  # every connection has pinged: steady state
        start = srv.ask("mark")
        trips0 = sum(c.ask("mark")["roundTrips"] for c in clients)
        time.sleep(seconds)
        end = srv.ask("mark")
        marks = [c.ask("mark") for c in clients]
        trips = sum(m["roundTrips"] for m in marks) - trips0
        lost = sum(m["lost"] for m in marks)
    finally:
        for c in clients:
            c.stop()
        srv.stop()
    return {
        "cpuPerRoundTripUs": (end["cpu"] - start["cpu"]) / max(trips, 1) * 1e6,
        "cpuPerSecond": (end["cpu"] - start["cpu"]) / seconds,
        "roundTripsPerSecond": trips / seconds,
        "bytesPerConnection": (start["rss"] - start["rss0"]) / connections,
        "lost": lost,
    }


def run(
    connections: int, seconds: float, runs: int, kinds: tuple[str, ...] = KINDS
) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(runs):
        for kind in kinds:  # interleaved: noise hits every kind alike
            samples[kind].append(measure(kind, connections, seconds))
    result: dict[str, Any] = {"connections": connections, "seconds": seconds, "runs": runs}
    for kind in kinds:
        result[kind] = {
            key: round(median([s[key] for s in samples[kind]]), 3) for key in samples[kind][0]
        }
    ours = result["ours"]
    ratios = {}
    for base in kinds:
        if base != "ours":
            ratios[f"cpu vs {base}"] = round(
                ours["cpuPerRoundTripUs"] / result[base]["cpuPerRoundTripUs"], 3
            )
    if "floor" in kinds:
        ratios["bytes/conn over floor"] = round(
            ours["bytesPerConnection"] - result["floor"]["bytesPerConnection"]
        )
    result["ratios"] = ratios
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="main")
    parser.add_argument("--kind", default="ours", choices=KINDS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.role == "server":
        server(args.kind)
    elif args.role == "client":
        client(args.kind, args.port, args.connections)
    else:
        import json

        json.dump(run(args.connections, args.seconds, args.runs), sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
