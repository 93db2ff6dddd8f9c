"""
Helpers for the cluster's end-to-end tests: a real Redis, real
C{twistd -n keepconn --cluster} nodes on 127.0.0.1, and library clients
in the test process that check what they receive.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import ClientState, KeepaliveClientFactory

from .e2e import Processes, Twistd, freePort, listening, status, waitFor

CLIENT_CONFIG = dict(interval=0.5, timeout=2.0, handshakeTimeout=2.0)


class Node:
    """One cluster node: a twistd server process with its ports."""

    def __init__(self, procs: Processes, name: str, redisPort: int, *extra: str) -> None:
        self.name = name
        self.port = freePort()
        self.statusPort = freePort()
        self.process: Twistd = procs.start(
            name,
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--status",
            f"tcp:{self.statusPort}",
            "--cluster",
            f"redis://127.0.0.1:{redisPort}/0",
            "--node",
            name,
            "--cluster-ttl",
            "2",
            "--interval",
            "1",
            "--idle-timeout",
            "4",
            "--session-grace",
            "30",
            *extra,
            logfile=True,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ready(self) -> Any:
        return listening(self.statusPort)

    def status(self) -> Deferred[Any]:
        return status(self.statusPort)  # type: ignore[no-any-return]

    def post(self, path: str, body: bytes) -> Deferred[tuple[int, Any]]:
        return post(self.statusPort, path, body)


def post(port: int, path: str, body: bytes) -> Deferred[tuple[int, Any]]:
    """POST to a status endpoint: (HTTP status, JSON answer)."""

    def send() -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    return deferToThread(send)


class Collecting(HeartbeatProtocol):
    def messageReceived(self, message: bytes) -> None:
        self.factory.received.append(message)


def client(clientId: str, servers: list[str], **config: Any) -> KeepaliveClientFactory:
    """A library client with a session, collecting what it receives."""
    factory = KeepaliveClientFactory(
        HeartbeatConfig(clientId=clientId, **{**CLIENT_CONFIG, **config}),
        servers=servers,
        resume=True,
        queueSize=10_000,
        retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=0.5),
        connectTimeout=1.0,
        stableAfter=0.5,
    )
    factory.protocol = Collecting
    factory.received = []
    return factory


def connectedTo(factory: KeepaliveClientFactory) -> str | None:
    if factory.state is not ClientState.CONNECTED:
        return None
    return str(factory.currentServer)


@pytest_twisted.inlineCallbacks
def startNodes(procs: Processes, redisPort: int, names: list[str], *extra: str) -> Any:
    nodes = [Node(procs, name, redisPort, *extra) for name in names]
    for node in nodes:
        yield waitFor(node.ready(), 20, f"node {node.name} to listen")
    return nodes


def clusterConnections(node: Node) -> Any:
    """The cluster's connections as a node sees them: client id -> node."""

    @pytest_twisted.inlineCallbacks
    def read() -> Any:
        s = yield node.status()
        return {c["client_id"]: c["node"] for c in s["cluster"].get("connections", [])}

    return read


def stopClients(factories: list[KeepaliveClientFactory]) -> None:
    for f in factories:
        f.stopTrying()


def now() -> float:
    return float(reactor.seconds())
