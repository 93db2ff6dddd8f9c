"""
What a client or a server is doing, as a snapshot: C{/status} (JSON) and
C{/metrics} (Prometheus) serve it.  L{clientStatus} and L{serverStatus}
read it from the factories, so an application can serve or export it too.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet.defer import fail, succeed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .client import ClientState, KeepaliveClientFactory
from .errors import UnknownClient
from .listen import Listener
from .server import KeepaliveServerFactory

#: /status key (snake_case, as every key there) -> the engine's counter.
COUNTERS = {
    "frames_in": "framesIn",
    "frames_out": "framesOut",
    "bytes_in": "bytesIn",
    "bytes_out": "bytesOut",
}


def _counters(protocol: Any) -> dict[str, int]:
    core = getattr(protocol, "core", None)
    if core is None:
        return {}  # not connected, or a foreign protocol: no frames
    flush = getattr(protocol, "flushCounters", None)
    if flush is not None:
        flush()
    return {key: getattr(core, name) for key, name in COUNTERS.items()}


class Totals:
    """
    Frames and bytes of connections that have ended, so counters never go
    down when a connection does.
    """

    def __init__(self) -> None:
        self.ended: Counter[str] = Counter()

    def add(self, protocol: Any) -> None:
        self.ended.update(_counters(protocol))

    def withLive(self, live: list[Any]) -> dict[str, int]:
        total = Counter(self.ended)
        for protocol in live:
            total.update(_counters(protocol))
        return {name: total[name] for name in COUNTERS}


def clientStatus(factory: KeepaliveClientFactory, totals: Totals | None = None) -> dict[str, Any]:
    """
    A client factory's state, as C{/status} shows it (keys in snake_case).
    """
    f = factory
    protocol = f.connected
    estimator = protocol.rtt if protocol is not None else None
    srtt = estimator.srtt if estimator is not None else None
    return {
        "mode": "client",
        "state": "connecting" if f.state is ClientState.IDLE else f.state.value,
        "server": f.currentServer,
        "rtt": srtt,
        "reconnects": f.reconnects,
        "heartbeat_timeouts": f.heartbeatTimeouts,
        "connected_since": f.connectedSince,
        "queued": len(f.queue),
        "unacknowledged": len(f.resumeSession) if f.resumeSession is not None else 0,
        "sessions_lost": f.sessionsLost,
        "undelivered": f.undelivered,
        "dropped": f.dropped,
        "refused": f.refused,
        "attempts": f.attempts,
        "failures": f.failures,
        "last_error": f.lastError,
        "interval": (
            protocol.core.liveness.interval
            if protocol is not None and protocol.core is not None
            else None
        ),
        "adaptive": _adaptive(f.adaptive),
        **(totals or Totals()).withLive([protocol] if protocol is not None else []),
    }


def _adaptive(adaptive: Any) -> dict[str, Any] | None:
    if adaptive is None:
        return None
    return {
        "current": adaptive.current,
        "longest_survived": adaptive.good,
        "shortest_failed": adaptive.failed,
        "learned": not adaptive.learning,
        "deaths": adaptive.deaths,
    }


def serverStatus(factory: KeepaliveServerFactory, totals: Totals | None = None) -> dict[str, Any]:
    """
    A server factory's state, as C{/status} shows it (keys in snake_case).
    """
    f = factory
    return {
        "mode": "server",
        "connections": [
            {
                "peer": info.peer,
                "client_id": info.clientId,
                "connected_since": info.connectedSince,
                "last_received": info.lastReceived,
                "rtt": info.rtt,
            }
            for info in f
        ],
        "evictions": f.evictions,
        "disconnects": {reason.value: n for reason, n in f.counts.items() if n},
        "sessions": len(f.sessions),
        "unacknowledged": sum(len(s) for s in f.sessions.values()),
        "sessions_resumed": f.sessionsResumed,
        "sessions_expired": f.sessionsExpired,
        "slow_consumers": f.slowConsumers,
        "push_refused": f.pushRefused,
        "handshaking": len(f._handshaking),
        "crowded_out": f.crowdedOut,
        "sessions_evicted": f.sessionsEvicted,
        "sessions_refused": f.sessionsRefused,
        "resumes_refused": f.resumesRefused,
        "memory_used": f.memoryBudget.used,
        "memory_budget": f.memoryBudget.limit,
        "memory_refusals": f.memoryBudget.refusals,
        "log_lines_suppressed": f.peerLog.suppressed if f.peerLog is not None else 0,
        "reconnects": f.reconnects,
        **(totals or Totals()).withLive(list(f.connections)),
    }


def clusterStatus(node: Any) -> dict[str, Any]:
    """
    A cluster node's own view: its name, whether Redis is reachable, and
    its cross-node counters (the whole cluster's clients come from Redis:
    see C{fullStatus}).
    """
    backend = node.backend
    return {
        "node": node.node,
        "redis": "up" if backend.up else "down",
        "redis_state_changes": getattr(backend, "stateChanges", 0),
        "sent_across": getattr(backend, "sentAcross", 0),
        "received_across": getattr(backend, "receivedAcross", 0),
        "failed_across": getattr(backend, "failedAcross", 0),
        "session_commits": getattr(backend, "commits", 0),
        "commit_failures": node.commitFailures,
        "sessions_adopted": node.sessionsAdopted,
        "sessions_moved_away": node.sessionsMovedAway,
    }


class _StatusResource(Resource):
    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        full = getattr(self.service, "fullStatus", None)
        if full is None:
            return json.dumps(self.service.status(), indent=2).encode() + b"\n"

        def write(status: dict[str, Any]) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(json.dumps(status, indent=2).encode() + b"\n")
                request.finish()

        full().addCallback(write)
        return NOT_DONE_YET


class _LiveView(Resource):
    """The page at C{/}: one file, no build step, nothing loaded from outside."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            b"connect-src 'self'",
        )
        return LIVE_VIEW.read_bytes()


#: The live view's page, shipped with the package.
LIVE_VIEW = Path(__file__).with_name("liveview.html")

#: A push's failures, as HTTP answers.
_PUSH_ERRORS = {
    "UnknownClient": 404,
    "NotDelivered": 409,
    "ClusterUnavailable": 503,
    "ClusterBusy": 503,
    "ClusterTimeout": 504,
}


class _PushResource(Resource):
    """
    C{POST /push/CLIENT_ID} (the body is the message) and C{POST
    /broadcast}: an operator pushes to a client on any node, or to all.
    """

    isLeaf = True

    def __init__(self, service: Any, everyone: bool) -> None:
        super().__init__()
        self.service = service
        self.everyone = everyone

    def render_POST(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        assert request.content is not None
        limit = self.service.factory.heartbeatConfig.maxFrame
        message = request.content.read(limit + 1)
        if len(message) > limit:
            request.setResponseCode(413)
            return (
                json.dumps(
                    {"error": "MessageTooLarge", "why": f"a message is at most {limit} bytes"}
                ).encode()
                + b"\n"
            )
        factory = self.service.factory
        cluster = getattr(self.service, "cluster", None)
        if self.everyone:
            if cluster is not None:
                d = cluster.broadcast(message)
            else:
                d = succeed(factory.broadcast(message))
            d.addCallback(lambda n: {"delivered": n})
        else:
            path = request.postpath or []
            if len(path) != 1 or not path[0]:
                request.setResponseCode(400)
                return b'{"error": "POST /push/CLIENT_ID"}\n'
            clientId = path[0].decode("utf-8", "replace")
            if cluster is not None:
                d = cluster.sendTo(clientId, message)
            elif factory.send(clientId, message):
                d = succeed("local")
            else:
                d = fail(UnknownClient(clientId))
            d.addCallback(lambda node: {"node": node})

        def ok(body: dict[str, Any]) -> None:
            _answer(request, 200, body)

        def failed(f: Any) -> None:
            code = _PUSH_ERRORS.get(type(f.value).__name__, 500)
            _answer(request, code, {"error": type(f.value).__name__, "why": str(f.value)})

        d.addCallbacks(ok, failed)
        return NOT_DONE_YET


def _answer(request: Request, code: int, body: dict[str, Any]) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(code)
    request.write(json.dumps(body).encode() + b"\n")
    request.finish()


class StatusService(Listener):
    """
    For a service: the live view at C{/}, C{GET /status} (JSON),
    C{GET /metrics} (Prometheus), and for a server C{POST /push/CLIENT_ID}
    and C{POST /broadcast}.
    """

    def __init__(self, description: str, service: Any) -> None:
        from prometheus_client.twisted import MetricsResource

        root = Resource()
        root.putChild(b"", _LiveView())
        root.putChild(b"status", _StatusResource(service))
        root.putChild(b"metrics", MetricsResource(registry=service.registry))
        if getattr(service, "mode", None) == "server":
            root.putChild(b"push", _PushResource(service, everyone=False))
            root.putChild(b"broadcast", _PushResource(service, everyone=True))
        site = Site(root)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]  # no access log
        super().__init__(description, site)
