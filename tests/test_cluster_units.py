"""
The cluster's deterministic parts on a fake clock: options, Redis URLs,
the live view's history, the session snapshots a node saves, the status
endpoint's page and push routes.  (The cluster itself is tested against a
real Redis: tests/test_redis_cluster.py, tests/test_cluster_e2e.py.)
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from twisted_keepalive.budget import MESSAGE_COST, MemoryBudget
from twisted_keepalive.history import History, serverCounters
from twisted_keepalive.redis_cluster import RedisCluster, parseRedisURL
from twisted_keepalive.server import KeepaliveServerFactory
from twisted_keepalive.service import KeepaliveServerService
from twisted_keepalive.session import Session
from twisted_keepalive.status import LIVE_VIEW, StatusService
from twisted_keepalive.tap import Options, makeService
from twisted_keepalive.workers import ReusePortEndpoint, WorkerPool, tcpAddress


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class ClusterOptionsTests(SynchronousTestCase):
    def test_clusterOptions(self) -> None:
        o = parse(
            "--listen",
            "tcp:9000",
            "--cluster",
            "redis://127.0.0.1:6380/2",
            "--node",
            "edge-1",
            "--cluster-ttl",
            "3",
        )
        service = makeService(o)
        main = next(s for s in service if isinstance(s, KeepaliveServerService))
        assert main.cluster is not None
        backend = main.cluster.backend
        assert isinstance(backend, RedisCluster)
        self.assertEqual(
            (backend.host, backend.port, backend.db, backend.node, backend.ttl),
            ("127.0.0.1", 6380, 2, "edge-1", 3.0),
        )
        # A live session outlives a killed node by its whole grace.
        self.assertEqual(main.cluster.liveTTL, 60.0 + 3.0)

    def test_badOptions(self) -> None:
        for args, message in [
            (("--cluster", "http://x"), "--cluster: a cluster URL is redis://"),
            (("--cluster", "redis://h:port"), "--cluster: bad port"),
            (("--cluster", "redis://h/x"), "must be a number"),
            (("--node", "n"), "--node names this server in a --cluster"),
            (("--cluster", "redis://h", "--node", "a b"), "letters, digits"),
            (("--workers", "2"), "--workers needs --cluster"),
            (("--workers", "0"), "--workers"),
        ]:
            with self.assertRaises(UsageError) as e:
                parse("--listen", "tcp:9000", *args)
            self.assertIn(message, str(e.exception), args)
        with self.assertRaises(UsageError) as e:
            parse("--listen", "unix:/tmp/s", "--cluster", "redis://h", "--workers", "2")
        self.assertIn("--workers shares a tcp: --listen port", str(e.exception))
        for args in (("--cluster", "redis://h"), ("--node", "n"), ("--workers", "2")):
            with self.assertRaises(UsageError) as e:
                parse("--host", "h:1", *args)
            self.assertIn("is a server option", str(e.exception))

    def test_workersShareThePort(self) -> None:
        o = parse(
            "--listen",
            "tcp:9000:interface=127.0.0.1",
            "--cluster",
            "redis://h",
            "--workers",
            "3",
            "--status",
            "tcp:9100",
        )
        top = makeService(o)
        main = next(s for s in top if isinstance(s, KeepaliveServerService))
        pool = next(s for s in top if isinstance(s, WorkerPool))
        assert isinstance(main.endpoint, ReusePortEndpoint)
        self.assertEqual((main.endpoint.interface, main.endpoint.port), ("127.0.0.1", 9000))
        self.assertEqual(pool.count, 3)
        # The workers get our own arguments back, and --worker.
        self.assertIn("--workers", pool.args)

    def test_aWorkersOptions(self) -> None:
        o = parse(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--cluster",
            "redis://h",
            "--node",
            "w",
            "--workers",
            "3",
            "--status",
            "tcp:9100",
            "--worker",
            "2:41234:1",
        )
        self.assertEqual(o["listen"], "tcp:41234:interface=127.0.0.1:backlog=50")
        self.assertEqual((o["node"], o["workers"], o["status"]), ("w-2", 1, None))
        with self.assertRaises(UsageError):
            parse("--listen", "tcp:0", "--worker", "x")

    def test_tcpAddress(self) -> None:
        self.assertEqual(tcpAddress("tcp:9000"), ("", 9000, 50))
        self.assertEqual(tcpAddress("tcp6:9000"), ("::", 9000, 50))
        self.assertEqual(
            tcpAddress("tcp:port=9:interface=127.0.0.2:backlog=7"), ("127.0.0.2", 9, 7)
        )
        self.assertEqual(tcpAddress(r"tcp6:9:interface=\:\:1"), ("::1", 9, 50))
        self.assertRaises(ValueError, tcpAddress, "tcp:port=9:interface=::1")
        self.assertRaises(ValueError, tcpAddress, "unix:/tmp/x")


class RedisURLTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parseRedisURL("redis://127.0.0.1"), ("127.0.0.1", 6379, 0, None))
        self.assertEqual(parseRedisURL("redis://:pw@h:1/3"), ("h", 1, 3, "pw"))
        self.assertEqual(parseRedisURL("unix:///run/r.sock?db=4"), ("/run/r.sock", 0, 4, None))
        self.assertRaises(ValueError, parseRedisURL, "unix://")
        self.assertRaises(ValueError, RedisCluster, "redis://h", "a:b")
        self.assertRaises(ValueError, RedisCluster, "redis://h", "n", ttl=0)


class HistoryTests(SynchronousTestCase):
    def test_samplesCountersAndGauges(self) -> None:
        clock = Clock()
        factory = KeepaliveServerFactory(clock=clock)
        history = History(serverCounters(factory), period=5, length=4, clock=clock)
        history.start()
        factory.evictions = 3
        clock.advance(5)
        factory.evictions = 4
        factory.reconnects = 2
        clock.advance(5)
        series = history.asJSON()["series"]
        self.assertEqual(series["evictions"], [0, 0, 3, 1])
        self.assertEqual(series["reconnects"], [0, 0, 0, 2])
        self.assertEqual(series["gauge_clients"], [0, 0, 0, 0])
        for _ in range(10):
            clock.advance(5)
        self.assertEqual(len(history.samples["evictions"]), 4)  # bounded
        history.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class SnapshotTests(SynchronousTestCase):
    def test_storedSinceAndRestore(self) -> None:
        s = Session(b"x" * 16)
        for i in range(5):
            s.store(b"m%d" % i)
        s.sent = 5
        s.acknowledge(2)
        self.assertEqual(s.firstUnacked, 3)
        self.assertEqual(s.storedSince(4), [(4, b"m3"), (5, b"m4")])
        self.assertEqual(s.storedSince(6), [])
        other = Session(b"x" * 16)
        other.budget = budget = MemoryBudget(1 << 20)
        other.restore(7, 6, 2, [(4, b"m3"), (3, b"m2"), (5, b"m4")])
        self.assertEqual(other.stored(), [(3, b"m2"), (4, b"m3"), (5, b"m4")])
        self.assertEqual((other.received, other.nextSeq, other.sent, other.acked), (7, 6, 5, 2))
        self.assertEqual(budget.used, 6 + 3 * MESSAGE_COST)
        other.acknowledge(5)
        self.assertEqual((len(other), budget.used), (0, 0))
        self.assertEqual(other.firstUnacked, 6)


class StatusRoutesTests(SynchronousTestCase):
    def service(self) -> KeepaliveServerService:
        return KeepaliveServerService("tcp:0", KeepaliveServerFactory().heartbeatConfig)

    def render(self, site: Any, path: bytes, method: bytes = b"GET", body: bytes = b"") -> Any:
        from io import BytesIO

        segments = [p for p in path.split(b"/")[1:]]
        request = DummyRequest(segments)
        request.method = method
        request.content = BytesIO(body)
        resource = site.getResourceFor(request)
        result = resource.render(request)
        if isinstance(result, bytes):
            request.write(result)
            request.finish()
        return request

    def test_liveViewIsOneSelfContainedPage(self) -> None:
        status = StatusService("tcp:0", self.service())
        request = self.render(status.factory, b"/")
        page = b"".join(request.written)
        self.assertEqual(page, LIVE_VIEW.read_bytes())
        self.assertIn(b"<script>", page)
        # Nothing from outside the machine: no URL with a host in it.
        self.assertNotIn(b"http://", page.replace(b"http://www.w3.org/2000/svg", b""))
        self.assertNotIn(b"https://", page)
        csp = request.responseHeaders.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"default-src 'none'", csp)

    def test_pushWithoutACluster(self) -> None:
        service = self.service()
        status = StatusService("tcp:0", service)
        request = self.render(status.factory, b"/push/nobody", b"POST", b"x")
        self.assertEqual(request.responseCode, 404)
        answer = json.loads(b"".join(request.written))
        self.assertEqual(answer["error"], "UnknownClient")
        request = self.render(status.factory, b"/broadcast", b"POST", b"x")
        self.assertEqual(json.loads(b"".join(request.written)), {"delivered": 0})
        request = self.render(status.factory, b"/push/", b"POST", b"x")
        self.assertEqual(request.responseCode, 400)
        limit = service.factory.heartbeatConfig.maxFrame
        request = self.render(status.factory, b"/broadcast", b"POST", b"x" * (limit + 1))
        self.assertEqual(request.responseCode, 413)
        self.assertIn(b"MessageTooLarge", b"".join(request.written))

    def test_statusCarriesHistory(self) -> None:
        status = self.service().status()
        self.assertEqual(
            set(status["history"]["series"]),
            {"evictions", "reconnects", "losses", "gauge_clients"},
        )
        self.assertNotIn("cluster", status)
