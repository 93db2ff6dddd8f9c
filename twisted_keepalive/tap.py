"""
The C{twistd keepconn} plugin: command-line options and the service they
build.

Client mode keeps a connection to C{--host}/C{--connect} alive and reports
on it; with C{--stdio} it is a resilient netcat, with C{--raw-ping} it keeps
alive a server that does not speak this protocol.  Server mode (C{--listen})
serves clients in echo, broadcast or sink mode.  C{--status} adds an HTTP
endpoint with C{/status} (JSON) and C{/metrics} (Prometheus).
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.python import usage

from .backoff import GROWTHS, JITTERS, jitteredBackoff
from .config import DEFAULT_MIN_INTERVAL, HeartbeatConfig
from .frames import DEFAULT_MAX_FRAME, MAX_WIRE_FRAME, MAX_WIRE_SECONDS, MIN_MAX_FRAME
from .raw import RawHeartbeatConfig, unescape
from .tcp import TCPKeepalive

MODES = ("echo", "broadcast", "sink")
#: The environment variable a token may come from, so it never shows in ps.
TOKEN_ENV = "KEEPCONN_TOKEN"
FAILOVERS = ("order", "round-robin")


def _seconds(name: str, allowZero: bool = False, wire: bool = False) -> Any:
    """
    A coercer for a number of seconds; C{wire}: it goes in a HELLO, as a
    u32 of milliseconds, so at most L{MAX_WIRE_SECONDS}.
    """

    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, not {text!r}") from None
        if not (value >= 0 if allowZero else value > 0) or value != value or value == float("inf"):
            kind = "zero or more" if allowZero else "a positive number of"
            raise ValueError(f"{name} must be {kind} seconds, not {text}")
        if wire and value > MAX_WIRE_SECONDS:
            raise ValueError(
                f"{name} must be at most {MAX_WIRE_SECONDS:.0f} seconds "
                f"(the wire carries milliseconds in 32 bits), not {text}"
            )
        if wire and 0 < value < 0.001:
            raise ValueError(f"{name} must be at least 0.001 seconds, not {text}")
        return value

    coerce.coerceDoc = "Seconds; fractions allowed."  # type: ignore[attr-defined]
    return coerce


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _bytes(name: str, minimum: int = 1) -> Any:
    def coerce(text: str) -> int:
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
        if match is None:
            raise ValueError(f"{name} must be a size such as 65536, 512K, 256M or 1G, not {text!r}")
        value = int(match.group(1)) * _UNITS[match.group(2).upper()]
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum} bytes, not {text}")
        return value

    coerce.coerceDoc = "Bytes; K, M and G suffixes allowed."  # type: ignore[attr-defined]
    return coerce


def _count(name: str, minimum: int = 0) -> Any:
    def coerce(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, not {text!r}") from None
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, not {value}")
        return value

    return coerce


def _choice(name: str, choices: tuple[str, ...]) -> Any:
    def coerce(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; not {text!r}")
        return text

    coerce.coerceDoc = f"One of: {', '.join(choices)}."  # type: ignore[attr-defined]
    return coerce


def _frameSize(text: str) -> int:
    value = _count("--max-frame", MIN_MAX_FRAME)(text)
    if value > MAX_WIRE_FRAME:
        raise ValueError(f"--max-frame must be at most {MAX_WIRE_FRAME}, not {value}")
    return int(value)


def _positiveFactor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--factor must be a number, not {text!r}") from None
    if not value >= 1:
        raise ValueError(f"--factor must be at least 1, not {text}")
    return value


class Options(usage.Options):
    synopsis = (
        "[options]\n"
        "  client:  twistd -n keepconn --host HOST --port PORT [--stdio | --raw-ping BYTES]\n"
        "  server:  twistd -n keepconn --listen tcp:9000 [--mode echo|broadcast|sink]\n"
        "  cluster: twistd -n keepconn --listen tcp:9000 --cluster redis://127.0.0.1:6379/0 "
        "[--node NAME] [--workers N]"
    )
    longdesc = (
        "Keep long-lived TCP connections alive: application heartbeats, dead-peer "
        "detection, jittered reconnection and failover (client mode); idle eviction, "
        "limits and graceful shutdown (server mode)."
    )

    optFlags = [
        [
            "verbose",
            "v",
            "Log every heartbeat (one line per PONG, with its RTT); without it the "
            "log says only what changes.",
        ],
        [
            "require-pongs",
            None,
            "Client: the server is alive only while it answers PINGs: ping every "
            "--interval whatever else flows, and declare it dead --timeout after "
            "its last PONG even if other bytes keep coming.",
        ],
        [
            "stdio",
            None,
            "Client: send each line of standard input as a message; write each "
            "message received to standard output.  Lines survive reconnections "
            "exactly once and in order (a session; see --session-grace).",
        ],
    ]

    optParameters = [
        [
            "port",
            "p",
            None,
            "Client: port for every --host given without one.",
            _count("--port", 1),
        ],
        [
            "interval",
            None,
            10.0,
            "Heartbeat interval in seconds (client: proposed; server: the longest allowed).",
            _seconds("--interval", wire=True),
        ],
        [
            "timeout",
            None,
            30.0,
            "Client: seconds of silence before the server is declared dead.",
            _seconds("--timeout", wire=True),
        ],
        ["backoff", None, "exponential", "Client: backoff growth.", _choice("--backoff", GROWTHS)],
        [
            "initial-delay",
            None,
            1.0,
            "Client: first retry delay in seconds.",
            _seconds("--initial-delay", allowZero=True),
        ],
        [
            "max-delay",
            None,
            60.0,
            "Client: longest retry delay in seconds, jitter included.",
            _seconds("--max-delay"),
        ],
        ["factor", None, 2.0, "Client: growth factor of exponential backoff.", _positiveFactor],
        [
            "jitter",
            None,
            "full",
            "Client: jitter of the retry delay.",
            _choice("--jitter", JITTERS),
        ],
        [
            "max-retries",
            None,
            None,
            "Client: give up after this many consecutive failures (default: never).",
            _count("--max-retries"),
        ],
        [
            "reset-after",
            None,
            10.0,
            "Client: seconds a connection must stay up before the backoff resets.",
            _seconds("--reset-after", allowZero=True),
        ],
        [
            "session-grace",
            None,
            60.0,
            "Server: seconds a disconnected client's session (its unacknowledged "
            "messages) is kept for it to resume; 0 turns sessions off.",
            _seconds("--session-grace", allowZero=True),
        ],
        [
            "session-buffer",
            None,
            10_000,
            "Server: messages kept per session until the client acknowledges them; "
            "a client that lets it fill is closed as a slow consumer.",
            _count("--session-buffer", 1),
        ],
        [
            "connect-timeout",
            None,
            10.0,
            "Client: seconds allowed for each connection attempt.",
            _seconds("--connect-timeout"),
        ],
        [
            "failover",
            None,
            "order",
            "Client: with several servers, start each pass from the "
            "first (order) or the next (round-robin).",
            _choice("--failover", FAILOVERS),
        ],
        [
            "tcp-keepalive",
            None,
            None,
            "Kernel keepalive as IDLE,INTERVAL,COUNT (whole seconds, whole seconds, probes).",
        ],
        [
            "user-timeout",
            None,
            None,
            "TCP_USER_TIMEOUT in seconds: give up on unacknowledged data after this long.",
            _seconds("--user-timeout"),
        ],
        [
            "token",
            None,
            None,
            "Shared secret (client: sent; server: required).  Visible in ps: "
            "prefer --token-file or the KEEPCONN_TOKEN environment variable.",
        ],
        [
            "token-file",
            None,
            None,
            "Read the shared secret from this file (its first line).",
        ],
        [
            "adaptive-interval",
            None,
            None,
            "Client: learn the longest silence the path survives (a NAT's timeout) "
            "and ping just inside it, up to this many seconds; a dead server is then "
            "detected within this + --timeout - --interval.",
            _seconds("--adaptive-interval", wire=True),
        ],
        [
            "max-interval",
            None,
            None,
            "Client: the longest ping interval a server may impose (default: 4 x "
            "--interval); a longer one fails the handshake.",
            _seconds("--max-interval", wire=True),
        ],
        [
            "min-interval",
            None,
            DEFAULT_MIN_INTERVAL,
            "Server: the shortest ping interval a client may use; faster "
            "proposals are given this (and pings faster than half of it are "
            "strikes).  Never above --interval.",
            _seconds("--min-interval", wire=True),
        ],
        [
            "max-handshaking",
            None,
            256,
            "Server: connections allowed to be in their handshake at once; past "
            "it the oldest gives way (sockets that never speak cannot keep "
            "clients out).",
            _count("--max-handshaking", 1),
        ],
        [
            "max-sessions",
            None,
            10_000,
            "Server: sessions kept at most (live or in their grace period).",
            _count("--max-sessions", 1),
        ],
        [
            "memory-budget",
            None,
            256 << 20,
            "Server: bytes all clients may hold together in session buffers and "
            "unread output (such as 256M); at the limit sessions in their grace "
            "are forgotten oldest first, then the clients holding the most are "
            "dropped.",
            _bytes("--memory-budget", 1 << 20),
        ],
        ["client-id", None, None, "Client: identifier sent to the server."],
        [
            "raw-ping",
            None,
            None,
            "Client: keep alive a foreign protocol by sending these bytes "
            "(escapes such as \\r\\n understood).",
        ],
        [
            "raw-expect",
            None,
            None,
            "Client, with --raw-ping: a regular expression matching the "
            "server's reply (without it the heartbeat is one-way).",
        ],
        [
            "queue-size",
            None,
            1000,
            "Client: messages kept while disconnected.",
            _count("--queue-size"),
        ],
        [
            "listen",
            "l",
            None,
            "Server: endpoint to listen on, such as tcp:9000 or "
            "tcp:9000:interface=127.0.0.1 or ssl:...",
        ],
        ["mode", None, "echo", "Server: what to do with messages.", _choice("--mode", MODES)],
        [
            "idle-timeout",
            None,
            30.0,
            "Server: seconds of silence before a client is evicted (a frame, "
            "however trickled, must also arrive whole within it).",
            _seconds("--idle-timeout", wire=True),
        ],
        [
            "max-connections",
            None,
            None,
            "Server: refuse connections beyond this many (default: no limit).",
            _count("--max-connections", 1),
        ],
        [
            "max-frame",
            None,
            DEFAULT_MAX_FRAME,
            "Largest frame accepted, in bytes.",
            _frameSize,
        ],
        [
            "shutdown-timeout",
            None,
            5.0,
            "Server: seconds clients get to leave on shutdown.",
            _seconds("--shutdown-timeout", allowZero=True),
        ],
        [
            "status",
            None,
            None,
            "HTTP endpoint for the live view (/), /status (JSON), /metrics "
            "(Prometheus) and a server's POST /push/CLIENT_ID and /broadcast, "
            "such as tcp:9100 (loopback unless an interface is given).",
        ],
        [
            "cluster",
            None,
            None,
            "Server: join a cluster through Redis, such as redis://127.0.0.1:6379/0 "
            "(presence, push to any node, sessions that survive a node).",
        ],
        [
            "node",
            None,
            None,
            "Server: this node's name in the cluster (default: host name and pid).",
        ],
        [
            "cluster-ttl",
            None,
            6.0,
            "Server: seconds after which a node that stopped renewing its presence "
            "(killed) leaves it.",
            _seconds("--cluster-ttl"),
        ],
        [
            "workers",
            None,
            1,
            "Server: processes serving the one --listen port (SO_REUSEPORT), joined by --cluster.",
            _count("--workers", 1),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["hosts"] = []
        self["connect"] = []
        self["worker"] = None
        self.argv: list[str] = []

    def parseOptions(self, options: Any = None) -> None:
        import sys

        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_worker(self, value: str) -> None:
        """(Internal: how --workers starts its other processes.)"""
        try:
            index, port, parent = (int(part) for part in value.split(":"))
        except ValueError:
            raise usage.UsageError(f"--worker {value!r}: expected INDEX:PORT:PID") from None
        self["worker"] = (index, port, parent)

    def opt_version(self) -> None:
        """Print this plugin's version (and Twisted's, and Python's), then exit."""
        import platform
        import sys

        from twisted._version import __version__ as twistedVersion

        from . import __version__

        print(
            f"twisted-keepalive {__version__} (Twisted {twistedVersion.short()}, "
            f"Python {platform.python_version()})"
        )
        sys.exit(0)

    def opt_host(self, value: str) -> None:
        """Client: server as HOST or HOST:PORT ([v6]:PORT); repeat for failover, in order."""
        self["hosts"].append(value)

    def opt_connect(self, value: str) -> None:
        """Client: endpoint such as tcp:host=H:port=P or tls:H:P; repeatable, after --host."""
        self["connect"].append(value)

    def postOptions(self) -> None:
        client = bool(self["hosts"] or self["connect"])
        if client and self["listen"]:
            raise usage.UsageError(
                "choose client mode (--host/--connect) or server mode (--listen), not both"
            )
        if not client and not self["listen"]:
            raise usage.UsageError(
                "give --host HOST --port PORT (client) or --listen ENDPOINT (server)"
            )
        self["servers"] = []
        if client:
            self._clientOptions()
        else:
            self._serverOptions()
        if self["tcp-keepalive"] is not None:
            try:
                keepalive = TCPKeepalive.parse(self["tcp-keepalive"])
            except ValueError as e:
                raise usage.UsageError(f"--tcp-keepalive: {e}") from None
        else:
            keepalive = None
        if self["user-timeout"] is not None:
            keepalive = keepalive or TCPKeepalive()
            keepalive = TCPKeepalive(
                keepalive.idle, keepalive.interval, keepalive.count, self["user-timeout"]
            )
        self["tcpKeepalive"] = keepalive
        self._token()
        if self["status"] is not None:
            self["status"] = loopbackByDefault(self["status"])
            self._checkServerEndpoint("--status", self["status"])
        self["heartbeat"] = self._heartbeatConfig(client)

    def _token(self) -> None:
        """
        The shared secret, from --token, --token-file or KEEPCONN_TOKEN (in
        that order; only one may be given).
        """
        given = [name for name in ("token", "token-file") if self[name] is not None]
        if len(given) > 1:
            raise usage.UsageError("give --token or --token-file, not both")
        if self["token-file"] is not None:
            try:
                with open(self["token-file"], "rb") as f:
                    text = f.read(4096).split(b"\n", 1)[0].rstrip(b"\r")
            except OSError as e:
                raise usage.UsageError(f"--token-file {self['token-file']}: {e.strerror}") from None
            token: bytes | None = text
            source = f"--token-file {self['token-file']}"
        elif self["token"] is not None:
            token, source = self["token"].encode(), "--token"
        elif os.environ.get(TOKEN_ENV):
            token, source = os.environ[TOKEN_ENV].encode(), TOKEN_ENV
        else:
            token, source = None, ""
        if token is not None and not 0 < len(token) <= 255:
            raise usage.UsageError(f"{source}: the token must be 1 to 255 bytes")
        self["secret"] = token

    def _clientOptions(self) -> None:
        for name in ("cluster", "node"):
            if self[name] is not None:
                raise usage.UsageError(f"--{name} is a server option")
        if self["workers"] != 1:
            raise usage.UsageError("--workers is a server option")
        for host in self["hosts"]:
            bracketed = host.startswith("[") and host.endswith("]")
            name, sep, port = ("", "", "") if bracketed else host.rpartition(":")
            if ":" in name and not (name.startswith("[") and name.endswith("]")):
                raise usage.UsageError(f"--host {host}: write an IPv6 address as [ADDRESS]:PORT")
            if sep and port.isdigit() and name:
                server = host
                if not 0 < int(port) < 65536:
                    raise usage.UsageError(f"--host {host}: port {port} is out of range")
            elif ":" in host and not host.startswith("["):
                raise usage.UsageError(f"--host {host}: write an IPv6 address as [ADDRESS]:PORT")
            else:
                if self["port"] is None:
                    raise usage.UsageError(
                        f"--host {host} has no port: add --port PORT or write {host}:PORT"
                    )
                server = f"{host}:{self['port']}"
            self["servers"].append(server)
        from twisted.internet import reactor

        for description in self["connect"]:
            try:
                clientFromString(reactor, description)
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--connect {description}: {e}") from None
            self["servers"].append(description)
        if self["timeout"] <= self["interval"]:
            raise usage.UsageError(
                f"--timeout ({self['timeout']:g}) must be longer than --interval "
                f"({self['interval']:g})"
            )
        if self["max-delay"] < self["initial-delay"]:
            raise usage.UsageError(
                f"--max-delay ({self['max-delay']:g}) must be at least --initial-delay "
                f"({self['initial-delay']:g})"
            )
        if self["raw-expect"] is not None and self["raw-ping"] is None:
            raise usage.UsageError("--raw-expect needs --raw-ping")
        self["raw"] = None
        if self["raw-ping"] is not None:
            try:
                ping = unescape(self["raw-ping"])
            except ValueError as e:
                raise usage.UsageError(f"--raw-ping: {e}") from None
            expect = None if self["raw-expect"] is None else self["raw-expect"].encode()
            if expect is not None:
                try:
                    re.compile(expect)
                except re.error as e:
                    raise usage.UsageError(f"--raw-expect {self['raw-expect']}: {e}") from None
            self["raw"] = RawHeartbeatConfig(ping, expect, self["interval"], self["timeout"])

    def _serverOptions(self) -> None:
        self._checkServerEndpoint("--listen", self["listen"])
        if self["idle-timeout"] <= self["interval"]:
            raise usage.UsageError(
                f"--idle-timeout ({self['idle-timeout']:g}) must be longer than --interval "
                f"({self['interval']:g}); twice as long lets a client miss one ping"
            )
        for flag in ("stdio", "require-pongs"):
            if self[flag]:
                raise usage.UsageError(f"--{flag} is a client option")
        for name in ("raw-ping", "raw-expect", "client-id", "max-interval", "adaptive-interval"):
            if self[name] is not None:
                raise usage.UsageError(f"--{name} is a client option")
        if self["cluster"] is not None:
            from .redis_cluster import parseRedisURL

            try:
                parseRedisURL(self["cluster"])
            except ValueError as e:
                raise usage.UsageError(f"--cluster: {e}") from None
            try:
                import txredisapi  # noqa: F401
            except ImportError:
                raise usage.UsageError(
                    "--cluster needs txredisapi: pip install 'twisted-keepalive[cluster]'"
                ) from None
        elif self["node"] is not None:
            raise usage.UsageError("--node names this server in a --cluster")
        if self["node"] is not None and not all(c.isalnum() or c in "-_." for c in self["node"]):
            raise usage.UsageError(
                f"--node {self['node']!r}: letters, digits, '-', '_' and '.' only"
            )
        if self["worker"] is not None:
            # One of --workers' processes: the first one's port, our own
            # node name, and no status endpoint (the first one serves it).
            index, port, _ = self["worker"]
            interface, _, backlog = self._tcpAddress()
            self["listen"] = f"tcp:{port}:interface={interface or '0.0.0.0'}:backlog={backlog}"
            self["status"] = None
            self["workers"] = 1
            if self["node"] is not None:
                self["node"] = f"{self['node']}-{index}"
        if self["workers"] > 1:
            if self["cluster"] is None:
                raise usage.UsageError(
                    "--workers needs --cluster: the workers share presence and push through it"
                )
            self._tcpAddress()

    def _tcpAddress(self) -> tuple[str, int, int]:
        from .workers import tcpAddress

        try:
            return tcpAddress(self["listen"])
        except ValueError:
            raise usage.UsageError(
                f"--workers shares a tcp: --listen port, not {self['listen']!r}"
            ) from None

    @staticmethod
    def _checkServerEndpoint(flag: str, description: str) -> None:
        from twisted.internet import reactor

        try:
            serverFromString(reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"{flag} {description}: {e}") from None

    def _heartbeatConfig(self, client: bool) -> HeartbeatConfig:
        token = self["secret"]
        try:
            if client:
                adaptive = self["adaptive-interval"]
                if adaptive is not None and adaptive <= self["interval"]:
                    raise ValueError(
                        f"--adaptive-interval ({adaptive:g}) must be longer than "
                        f"--interval ({self['interval']:g})"
                    )
                if adaptive is not None and self["require-pongs"]:
                    raise ValueError("--adaptive-interval and --require-pongs do not mix")
                if self["max-interval"] is not None and self["max-interval"] < self["interval"]:
                    raise ValueError(
                        f"--max-interval ({self['max-interval']:g}) must be at least "
                        f"--interval ({self['interval']:g})"
                    )
                return HeartbeatConfig(
                    interval=self["interval"],
                    timeout=self["timeout"],
                    maxInterval=self["max-interval"],
                    adaptiveInterval=self["adaptive-interval"],
                    requirePongs=bool(self["require-pongs"]),
                    maxFrame=self["max-frame"],
                    clientId=self["client-id"],
                    token=token,
                    tcpKeepalive=self["tcpKeepalive"],
                )
            return HeartbeatConfig(
                interval=self["interval"],
                timeout=self["idle-timeout"],
                # The floor never above the ceiling.
                minInterval=min(self["min-interval"], self["interval"]),
                maxFrame=self["max-frame"],
                token=token,
                tcpKeepalive=self["tcpKeepalive"],
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def retryPolicy(self) -> Any:
        return jitteredBackoff(
            self["backoff"],
            initialDelay=self["initial-delay"],
            maxDelay=self["max-delay"],
            factor=self["factor"],
            jitter=self["jitter"],
        )


def loopbackByDefault(description: str) -> str:
    """
    A status endpoint without an interface listens on loopback only: the
    status page names every client, and metrics are not for the world.
    C{9100} and C{tcp:9100} become C{tcp:9100:interface=127.0.0.1};
    anything naming an interface (or another kind of endpoint) is kept.
    """
    if description.isdigit():
        description = f"tcp:{description}"
    if description.startswith(("tcp:", "tcp6:")) and "interface=" not in description:
        host = "::1" if description.startswith("tcp6:") else "127.0.0.1"
        host = host.replace(":", "\\:")
        return f"{description}:interface={host}"
    return description


def _sharedPort(options: Options) -> Any:
    """
    With --workers (or as one of them): the --listen port opened with
    SO_REUSEPORT, so that every worker process can listen on it too.
    """
    if options["workers"] <= 1 and options["worker"] is None:
        return None
    from .workers import ReusePortEndpoint, dieWithParent, tcpAddress

    if options["worker"] is not None:
        dieWithParent(options["worker"][2])
    return ReusePortEndpoint(*tcpAddress(options["listen"]))


def makeService(options: Options) -> IService:
    """
    Build the client or server service (and the status endpoint) that the
    options describe: this module only translates options into arguments.
    """
    from .service import KeepaliveClientService, KeepaliveServerService
    from .signals import GracefulSignals
    from .status import StatusService

    top = MultiService()
    GracefulSignals().setServiceParent(top)
    if options["listen"]:
        grace = options["session-grace"]
        main: Any = KeepaliveServerService(
            options["listen"],
            options["heartbeat"],
            mode=options["mode"],
            maxConnections=options["max-connections"],
            sessionGrace=grace if grace > 0 else None,
            sessionBuffer=options["session-buffer"],
            maxHandshaking=options["max-handshaking"],
            maxSessions=options["max-sessions"],
            memoryBudget=options["memory-budget"],
            shutdownTimeout=options["shutdown-timeout"],
            cluster=options["cluster"],
            node=options["node"],
            clusterTTL=options["cluster-ttl"],
            endpoint=_sharedPort(options),
        )
    else:
        main = KeepaliveClientService(
            options["heartbeat"],
            options["servers"],
            retryPolicy=options.retryPolicy(),
            failover=options["failover"],
            stableAfter=options["reset-after"],
            connectTimeout=options["connect-timeout"],
            maxRetries=options["max-retries"],
            queueSize=options["queue-size"],
            stdio=bool(options["stdio"]),
            raw=options["raw"],
            verbose=bool(options["verbose"]),
        )
    main.setServiceParent(top)
    if options["listen"] and options["workers"] > 1:
        from .workers import WorkerPool

        WorkerPool(
            options["workers"],
            options.argv,
            main.endpoint,
            stopTimeout=options["shutdown-timeout"] + 5,
        ).setServiceParent(top)
    if options["status"] is not None:
        StatusService(options["status"], main).setServiceParent(top)
    return top
