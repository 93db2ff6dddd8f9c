"""
What a client or a server is doing, as a snapshot: C{/status} (JSON) and
C{/metrics} (Prometheus) serve it.  L{clientStatus} and L{serverStatus}
read it from the factories, so an application can serve or export it too.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .client import ClientState, KeepaliveClientFactory
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
        **(totals or Totals()).withLive([protocol] if protocol is not None else []),
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
        **(totals or Totals()).withLive(list(f.connections)),
    }


class _StatusResource(Resource):
    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.service.status(), indent=2).encode() + b"\n"


class StatusService(Listener):
    """
    C{GET /status} (JSON) and C{GET /metrics} (Prometheus) for a service.
    """

    def __init__(self, description: str, service: Any) -> None:
        from prometheus_client.twisted import MetricsResource

        root = Resource()
        root.putChild(b"status", _StatusResource(service))
        root.putChild(b"metrics", MetricsResource(registry=service.registry))
        site = Site(root)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]  # no access log
        super().__init__(description, site)
