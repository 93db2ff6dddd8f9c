"""
twistd keepconn: option parsing, every bad-option message, and the
services makeService builds (as twisted.web's test_tap does).
"""

from __future__ import annotations

from twisted.application.service import IServiceCollection
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from twisted_keepalive import TCPKeepalive
from twisted_keepalive.client import KeepaliveClientFactory
from twisted_keepalive.raw import RawHeartbeatConfig
from twisted_keepalive.service import KeepaliveClientService, KeepaliveServerService
from twisted_keepalive.signals import GracefulSignals
from twisted_keepalive.status import StatusService
from twisted_keepalive.tap import Options, makeService


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class ClientOptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        o = parse("--host", "example.org", "--port", "9000")
        self.assertEqual(o["servers"], ["example.org:9000"])
        config = o["heartbeat"]
        self.assertEqual((config.interval, config.timeout), (10.0, 30.0))
        self.assertEqual(
            (o["backoff"], o["jitter"], o["failover"]), ("exponential", "full", "order")
        )
        self.assertEqual((o["initial-delay"], o["max-delay"], o["factor"]), (1.0, 60.0, 2.0))
        self.assertIsNone(o["max-retries"])
        self.assertIsNone(o["raw"])

    def test_failoverListInOrder(self) -> None:
        o = parse(
            "--host",
            "a",
            "--host",
            "b:7000",
            "--host",
            "[::1]:7001",
            "--port",
            "9000",
            "--connect",
            "tcp:host=127.0.0.1:port=7002",
        )
        self.assertEqual(
            o["servers"], ["a:9000", "b:7000", "[::1]:7001", "tcp:host=127.0.0.1:port=7002"]
        )

    def test_everyKnob(self) -> None:
        o = parse(
            "--host",
            "h:1",
            "--interval",
            "0.5",
            "--timeout",
            "2.5",
            "--backoff",
            "linear",
            "--initial-delay",
            "0.2",
            "--max-delay",
            "9",
            "--factor",
            "1.5",
            "--jitter",
            "decorrelated",
            "--max-retries",
            "4",
            "--reset-after",
            "3",
            "--connect-timeout",
            "4",
            "--tcp-keepalive",
            "30,5,3",
            "--user-timeout",
            "7.5",
            "--token",
            "t0k",
            "--client-id",
            "dev-9",
            "--failover",
            "round-robin",
        )
        c = o["heartbeat"]
        self.assertEqual((c.interval, c.timeout, c.token, c.clientId), (0.5, 2.5, b"t0k", "dev-9"))
        self.assertEqual(c.tcpKeepalive, TCPKeepalive(30, 5, 3, 7.5))
        self.assertEqual((o["max-retries"], o["reset-after"], o["connect-timeout"]), (4, 3.0, 4.0))

    def test_rawMode(self) -> None:
        o = parse("--host", "h:6379", "--raw-ping", r"PING\r\n", "--raw-expect", r"\+PONG")
        self.assertEqual(o["raw"], RawHeartbeatConfig(b"PING\r\n", rb"\+PONG", 10.0, 30.0))


class BadOptionTests(SynchronousTestCase):
    """
    Each bad command line: one precise UsageError message.
    """

    cases = [
        (
            ["--host", "a:1", "--adaptive-interval", "5"],
            "--adaptive-interval (5) must be longer than --interval (10)",
        ),
        (
            ["--host", "a:1", "--adaptive-interval", "60", "--require-pongs"],
            "--adaptive-interval and --require-pongs do not mix",
        ),
        (["--listen", "tcp:1", "--adaptive-interval", "60"], "--adaptive-interval is a client"),
        (["--host", "a:1", "--interval", "-1"], "--interval must be a positive number of seconds"),
        (["--host", "a:1", "--interval", "ten"], "--interval must be a number of seconds"),
        (
            ["--host", "a:1", "--interval", "10", "--timeout", "5"],
            "--timeout (5) must be longer than --interval (10)",
        ),
        (["--host", "a:1", "--jitter", "wild"], "--jitter must be one of none, full"),
        (["--host", "a:1", "--backoff", "cubic"], "--backoff must be one of fixed"),
        (["--host", "example.org"], "--host example.org has no port: add --port PORT"),
        (["--host", "a:99999"], "port 99999 is out of range"),
        (["--host", "::1:80"], "write an IPv6 address as [ADDRESS]:PORT"),
        (["--host", "::1", "--port", "80"], "write an IPv6 address as [ADDRESS]:PORT"),
        (["--host", "a:1", "--listen", "tcp:9000"], "not both"),
        ([], "give --host HOST --port PORT (client) or --listen ENDPOINT (server)"),
        (["--listen", "nonsense:9000"], "--listen nonsense:9000: Unknown endpoint type"),
        (["--connect", "bogus:x"], "--connect bogus:x"),
        (["--host", "a:1", "--status", "nope:1"], "--status nope:1"),
        (
            ["--host", "a:1", "--tcp-keepalive", "1,2"],
            "--tcp-keepalive: expected IDLE,INTERVAL,COUNT",
        ),
        (["--host", "a:1", "--max-delay", "1", "--initial-delay", "5"], "--max-delay (1)"),
        (["--host", "a:1", "--factor", "0.5"], "--factor must be at least 1"),
        (["--host", "a:1", "--max-retries", "-2"], "--max-retries must be at least 0"),
        (["--host", "a:1", "--raw-expect", "x"], "--raw-expect needs --raw-ping"),
        (["--host", "a:1", "--raw-ping", "P", "--raw-expect", "("], "--raw-expect (: missing )"),
        (["--listen", "tcp:9000", "--idle-timeout", "5"], "--idle-timeout (5) must be longer"),
        (["--listen", "tcp:9000", "--stdio"], "--stdio is a client option"),
        (
            ["--listen", "tcp:9000", "--mode", "shout"],
            "--mode must be one of echo, broadcast, sink",
        ),
        (
            ["--listen", "tcp:9000", "--max-connections", "0"],
            "--max-connections must be at least 1",
        ),
        (["--host", "a:1", "--token", ""], "--token: the token must be 1 to 255 bytes"),
        # Every value that goes on the wire fits the wire (u32 milliseconds).
        (["--listen", "tcp:9000", "--idle-timeout", "5000000"], "--idle-timeout must be at most"),
        (["--host", "a:1", "--interval", "0.0001"], "--interval must be at least 0.001"),
        (["--host", "a:1", "--timeout", "1e7"], "--timeout must be at most 4294967 seconds"),
        (["--host", "a:1", "--max-frame", "5000000000"], "--max-frame must be at most 4294967295"),
        (
            ["--host", "a:1", "--max-interval", "5"],
            "--max-interval (5) must be at least --interval",
        ),
        (["--listen", "tcp:9000", "--max-interval", "50"], "--max-interval is a client option"),
        (["--listen", "tcp:9000", "--require-pongs"], "--require-pongs is a client option"),
        (["--listen", "tcp:9000", "--memory-budget", "lots"], "--memory-budget must be a size"),
        (["--listen", "tcp:9000", "--memory-budget", "1K"], "must be at least 1048576 bytes"),
        (
            ["--listen", "tcp:9000", "--max-handshaking", "0"],
            "--max-handshaking must be at least 1",
        ),
        (
            ["--host", "a:1", "--token-file", "/nonexistent/t"],
            "--token-file /nonexistent/t: No such",
        ),
        (
            ["--host", "a:1", "--token", "x", "--token-file", "/t"],
            "--token or --token-file, not both",
        ),
    ]

    def test_messages(self) -> None:
        for args, fragment in self.cases:
            with self.assertRaises(UsageError, msg=args) as ctx:
                parse(*args)
            message = str(ctx.exception)
            self.assertIn(fragment, message, args)
            self.assertNotIn("\n", message, args)  # one line


class ServerOptionsTests(SynchronousTestCase):
    def test_serverDefaults(self) -> None:
        o = parse("--listen", "tcp:9000:interface=127.0.0.1")
        c = o["heartbeat"]
        self.assertEqual((c.interval, c.timeout, c.maxFrame), (10.0, 30.0, 1 << 20))
        self.assertEqual((o["mode"], o["max-connections"]), ("echo", None))

    def test_serverKnobs(self) -> None:
        o = parse(
            "--listen",
            "tcp:9000",
            "--mode",
            "broadcast",
            "--idle-timeout",
            "45",
            "--interval",
            "15",
            "--max-connections",
            "100",
            "--max-frame",
            "65536",
            "--token",
            "s",
        )
        c = o["heartbeat"]
        self.assertEqual((c.interval, c.timeout, c.maxFrame, c.token), (15.0, 45.0, 65536, b"s"))
        self.assertEqual(o["max-connections"], 100)


class MakeServiceTests(SynchronousTestCase):
    def children(self, options: Options) -> list[object]:
        return list(IServiceCollection(makeService(options)))

    def test_client(self) -> None:
        services = self.children(
            parse(
                "--host",
                "127.0.0.1:9000",
                "--host",
                "127.0.0.1:9001",
                "--max-retries",
                "3",
                "--reset-after",
                "4",
            )
        )
        self.assertEqual([type(s) for s in services], [GracefulSignals, KeepaliveClientService])
        client = services[1]
        assert isinstance(client, KeepaliveClientService)
        factory = client.factory
        self.assertIsInstance(factory, KeepaliveClientFactory)
        assert factory.servers is not None
        self.assertEqual(
            [label for label, _ in factory.servers.entries], ["127.0.0.1:9000", "127.0.0.1:9001"]
        )
        self.assertEqual((factory.maxRetries, factory.stableAfter), (3, 4.0))

    def test_serverWithStatus(self) -> None:
        services = self.children(
            parse(
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--status",
                "tcp:0:interface=127.0.0.1",
                "--max-connections",
                "7",
                "--mode",
                "sink",
            )
        )
        self.assertEqual(
            [type(s) for s in services], [GracefulSignals, KeepaliveServerService, StatusService]
        )
        server = services[1]
        assert isinstance(server, KeepaliveServerService)
        self.assertEqual((server.factory.maxConnections, server.factory.mode), (7, "sink"))
        self.assertEqual(server.status()["connections"], [])

    def test_pluginIsListed(self) -> None:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        names = [p.tapname for p in getPlugins(IServiceMaker)]
        self.assertIn("keepconn", names)


class ServerModeTests(SynchronousTestCase):
    """
    --mode echo, broadcast and sink, with in-memory clients.
    """

    def run_mode(self, mode: str) -> list[list[bytes]]:
        from twisted.internet.task import Clock

        from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol, Role
        from twisted_keepalive.testing import MemoryPair

        clock = Clock()
        service = makeService(parse("--listen", "tcp:0:interface=127.0.0.1", "--mode", mode))
        server = list(IServiceCollection(service))[1]
        assert isinstance(server, KeepaliveServerService)
        server.factory.clock = clock
        received: list[list[bytes]] = [[], [], []]

        class Client(HeartbeatProtocol):
            def messageReceived(self, message: bytes) -> None:
                received[self.index].append(message)

        pairs = []
        for index in range(3):
            client = Client(HeartbeatConfig(interval=1, timeout=3), role=Role.CLIENT, clock=clock)
            client.index = index
            pairs.append(MemoryPair(client, server.factory.buildProtocol(None), clock).connect())
        pairs[0].client.sendMessage(b"from 0")
        for pair in pairs:
            pair.pump()
        for pair in pairs:
            pair.clientTransport.loseConnection()
            pair.pump()
        self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])
        return received

    def test_echo(self) -> None:
        self.assertEqual(self.run_mode("echo"), [[b"from 0"], [], []])

    def test_broadcast(self) -> None:
        self.assertEqual(self.run_mode("broadcast"), [[], [b"from 0"], [b"from 0"]])

    def test_sink(self) -> None:
        self.assertEqual(self.run_mode("sink"), [[], [], []])


class HardeningOptionsTests(SynchronousTestCase):
    """
    The options of #13: secrets kept out of ps, status on loopback, limits.
    """

    def test_tokenFromFile(self) -> None:
        import os
        import tempfile

        fd, path = tempfile.mkstemp()
        self.addCleanup(os.remove, path)
        with os.fdopen(fd, "wb") as f:
            f.write(b"s3cret\nignored second line\n")
        o = parse("--host", "a:1", "--token-file", path)
        self.assertEqual(o["heartbeat"].token, b"s3cret")

    def test_tokenFromEnvironment(self) -> None:
        import os

        self.patch(os, "environ", {**os.environ, "KEEPCONN_TOKEN": "from-env"})
        self.assertEqual(parse("--listen", "tcp:0")["heartbeat"].token, b"from-env")
        # An explicit option wins over the environment.
        self.assertEqual(parse("--listen", "tcp:0", "--token", "t")["heartbeat"].token, b"t")

    def test_statusOnLoopbackByDefault(self) -> None:
        for given, expected in (
            ("9100", "tcp:9100:interface=127.0.0.1"),
            ("tcp:9100", "tcp:9100:interface=127.0.0.1"),
            ("tcp:9100:interface=0.0.0.0", "tcp:9100:interface=0.0.0.0"),
            ("tcp6:9100", "tcp6:9100:interface=\\:\\:1"),
        ):
            self.assertEqual(parse("--listen", "tcp:0", "--status", given)["status"], expected)

    def test_serverLimits(self) -> None:
        o = parse(
            "--listen",
            "tcp:0",
            "--memory-budget",
            "64M",
            "--max-sessions",
            "50",
            "--max-handshaking",
            "32",
            "--min-interval",
            "2",
            "--interval",
            "1",
        )
        self.assertEqual(
            (o["memory-budget"], o["max-sessions"], o["max-handshaking"]), (64 << 20, 50, 32)
        )
        self.assertEqual(o["heartbeat"].minInterval, 1.0)  # never above --interval

    def test_clientBounds(self) -> None:
        c = parse("--host", "a:1", "--max-interval", "60", "--require-pongs")["heartbeat"]
        self.assertEqual((c.maxInterval, c.requirePongs), (60.0, True))


class OperatorTests(SynchronousTestCase):
    def test_versionIsOurs(self) -> None:
        import contextlib
        import io

        from twisted_keepalive import __version__

        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as ctx:
            parse("--version")
        self.assertEqual(ctx.exception.code, 0)
        self.assertTrue(out.getvalue().startswith(f"twisted-keepalive {__version__} (Twisted "))

    def test_heartbeatLinesOnlyWhenVerbose(self) -> None:
        from typing import cast

        from twisted.logger import ILogObserver, globalLogPublisher

        class FakeProtocol:
            rtt = None

        for args, expected in (((), 0), (("--verbose",), 1)):
            events: list[dict[str, object]] = []
            observer = cast(ILogObserver, events.append)
            globalLogPublisher.addObserver(observer)
            try:
                service = makeService(parse("--host", "a:1", *args)).services[1]
                service.rttObserved(0.001, FakeProtocol())
            finally:
                globalLogPublisher.removeObserver(observer)
            lines = [e for e in events if "Heartbeat from" in str(e.get("log_format"))]
            self.assertEqual(len(lines), expected, args)


class AdaptiveOptionTests(SynchronousTestCase):
    def test_adaptiveInterval(self) -> None:
        o = parse(
            "--host", "a:1", "--interval", "5", "--timeout", "15", "--adaptive-interval", "120"
        )
        self.assertEqual(o["heartbeat"].adaptiveInterval, 120.0)
        service = next(s for s in makeService(o) if isinstance(s, KeepaliveClientService))
        adaptive = service.factory.adaptive
        assert adaptive is not None
        self.assertEqual((adaptive.base, adaptive.maximum), (5.0, 120.0))
