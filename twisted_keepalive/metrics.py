"""
Prometheus metrics for a client or a server: read at scrape time from the
same snapshot C{/status} shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet import reactor as _reactor
from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread

from .server import DisconnectReason

reactor: Any = _reactor

RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def metricsRegistry(
    status: Callable[[], dict[str, Any]], mode: str, rttHelp: str
) -> tuple[CollectorRegistry, Histogram]:
    """
    A registry of the daemon's own: an RTT histogram, observed as PONGs
    arrive, the collector that reads everything else from C{status} at
    scrape time, the process and the versions running.
    """
    registry = CollectorRegistry()
    rtt = Histogram("keepalive_rtt_seconds", rttHelp, buckets=RTT_BUCKETS, registry=registry)
    registry.register(StatusCollector(status))
    # The process (CPU, memory, file descriptors) and what is running.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    from twisted import __version__ as twistedVersion

    from . import __version__

    Info("keepalive_build", "Versions running.", registry=registry).info(
        {"version": __version__, "twisted": twistedVersion, "mode": mode}
    )
    return registry, rtt


class StatusCollector(Collector):
    """
    Metrics read at scrape time from a status snapshot (L{clientStatus} or
    L{serverStatus}, as C{/status} shows it): nothing is counted twice and
    nothing on the data path pays for metrics.  An application registers
    one in its own registry::

        registry.register(StatusCollector(lambda: serverStatus(factory)))

    prometheus_client's Twisted resource scrapes in a thread; the snapshot
    is then taken in the reactor thread.
    """

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        # In the reactor's thread (or with no reactor running) read it here;
        # from a scraping thread, in the reactor's.
        direct = isInIOThread() or not reactor.running
        status = self.status() if direct else blockingCallFromThread(reactor, self.status)
        frames = CounterMetricFamily("keepalive_frames", "Frames.", labels=["direction"])
        frames.add_metric(["in"], status["frames_in"])
        frames.add_metric(["out"], status["frames_out"])
        yield frames
        sizes = CounterMetricFamily("keepalive_bytes", "Bytes on the wire.", labels=["direction"])
        sizes.add_metric(["in"], status["bytes_in"])
        sizes.add_metric(["out"], status["bytes_out"])
        yield sizes
        if status["mode"] == "client":
            state = GaugeMetricFamily(
                "keepalive_client_state", "1 for the current state.", labels=["state"]
            )
            for name in ("connecting", "connected", "waiting", "stopped"):
                state.add_metric([name], 1.0 if status["state"] == name else 0.0)
            yield state
            yield CounterMetricFamily(
                "keepalive_client_reconnects", "Successful reconnections.", status["reconnects"]
            )
            yield CounterMetricFamily(
                "keepalive_client_connect_attempts", "Connection attempts.", status["attempts"]
            )
            yield CounterMetricFamily(
                "keepalive_heartbeat_timeouts",
                "Connections aborted because the server went silent.",
                status["heartbeat_timeouts"],
            )
            yield GaugeMetricFamily(
                "keepalive_client_queued_messages",
                "Messages waiting for a connection.",
                status["queued"],
            )
            yield GaugeMetricFamily(
                "keepalive_client_unacknowledged_messages",
                "Messages of the session not yet acknowledged by the server.",
                status["unacknowledged"],
            )
            yield CounterMetricFamily(
                "keepalive_client_sessions_lost",
                "Sessions the server no longer had (messages may be lost).",
                status["sessions_lost"],
            )
            lost = CounterMetricFamily(
                "keepalive_client_messages_not_delivered",
                "Messages that may not have arrived, by why.",
                labels=["why"],
            )
            lost.add_metric(["session_lost"], status["undelivered"])
            lost.add_metric(["dropped"], status["dropped"])
            lost.add_metric(["refused"], status["refused"])
            yield lost
            if status["rtt"] is not None:
                yield GaugeMetricFamily(
                    "keepalive_smoothed_rtt_seconds", "Smoothed RTT (RFC 6298).", status["rtt"]
                )
            if status.get("interval") is not None:
                yield GaugeMetricFamily(
                    "keepalive_client_interval_seconds",
                    "The ping interval in use (learned, with --adaptive-interval).",
                    status["interval"],
                )
        else:
            yield GaugeMetricFamily(
                "keepalive_server_connections", "Live connections.", len(status["connections"])
            )
            yield CounterMetricFamily(
                "keepalive_server_evictions", "Clients evicted for silence.", status["evictions"]
            )
            gone = CounterMetricFamily(
                "keepalive_server_disconnects", "Clients gone, by reason.", labels=["reason"]
            )
            for reason in DisconnectReason:
                gone.add_metric([reason.value], status["disconnects"].get(reason.value, 0))
            yield gone
            yield GaugeMetricFamily(
                "keepalive_server_sessions", "Sessions kept (live or in grace).", status["sessions"]
            )
            yield GaugeMetricFamily(
                "keepalive_server_unacknowledged_messages",
                "Messages to clients kept in sessions until acknowledged.",
                status["unacknowledged"],
            )
            yield CounterMetricFamily(
                "keepalive_server_sessions_expired",
                "Sessions forgotten after their grace period.",
                status["sessions_expired"],
            )
            yield CounterMetricFamily(
                "keepalive_server_slow_consumers",
                "Push recipients closed because their session buffer was full.",
                status["slow_consumers"],
            )
            yield GaugeMetricFamily(
                "keepalive_server_handshaking",
                "Connections in their handshake.",
                status["handshaking"],
            )
            yield CounterMetricFamily(
                "keepalive_server_crowded_out",
                "Connections dropped in their handshake to make room for a newer one.",
                status["crowded_out"],
            )
            ended = CounterMetricFamily(
                "keepalive_server_sessions_ended",
                "Sessions forgotten with messages maybe undelivered, by why.",
                labels=["why"],
            )
            ended.add_metric(["expired"], status["sessions_expired"])
            ended.add_metric(["evicted"], status["sessions_evicted"])
            yield ended
            refused = CounterMetricFamily(
                "keepalive_server_sessions_refused",
                "Session handshakes refused, by why.",
                labels=["why"],
            )
            refused.add_metric(["limit"], status["sessions_refused"])
            refused.add_metric(["resume"], status["resumes_refused"])
            yield refused
            yield GaugeMetricFamily(
                "keepalive_server_memory_used_bytes",
                "Bytes held in session buffers and unread output.",
                status["memory_used"],
            )
            yield GaugeMetricFamily(
                "keepalive_server_memory_budget_bytes",
                "The limit on memory_used.",
                status["memory_budget"],
            )
            yield CounterMetricFamily(
                "keepalive_server_log_lines_suppressed",
                "Log lines about peers not written (one per peer host and kind per period).",
                status["log_lines_suppressed"],
            )
            yield CounterMetricFamily(
                "keepalive_server_reconnects",
                "Clients that came back (a client id seen leaving, or a session resumed).",
                status["reconnects"],
            )
            cluster = status.get("cluster")
            if cluster is not None:
                yield from _clusterMetrics(cluster)


def _clusterMetrics(cluster: dict[str, Any]) -> Iterator[Any]:
    """A cluster node's own figures (the whole cluster is in /status)."""
    yield GaugeMetricFamily(
        "keepalive_cluster_redis_up",
        "1 while Redis is reachable (presence, push and sessions cross nodes).",
        1.0 if cluster["redis"] == "up" else 0.0,
    )
    yield CounterMetricFamily(
        "keepalive_cluster_redis_state_changes",
        "Times Redis became reachable or unreachable.",
        cluster["redis_state_changes"],
    )
    across = CounterMetricFamily(
        "keepalive_cluster_messages_across",
        "Pushes between nodes, by outcome.",
        labels=["outcome"],
    )
    across.add_metric(["sent"], cluster["sent_across"])
    across.add_metric(["received"], cluster["received_across"])
    across.add_metric(["failed"], cluster["failed_across"])
    yield across
    commits = CounterMetricFamily(
        "keepalive_cluster_session_commits",
        "Session saves to Redis, by outcome.",
        labels=["outcome"],
    )
    commits.add_metric(["ok"], cluster["session_commits"])
    commits.add_metric(["failed"], cluster["commit_failures"])
    yield commits
    yield CounterMetricFamily(
        "keepalive_cluster_sessions_adopted",
        "Sessions resumed here that another node (or an earlier run) saved.",
        cluster["sessions_adopted"],
    )
