"""
End to end: real `twistd -n keepconn` processes on 127.0.0.1 (pytest only).

Every process started is killed and reaped in the test's `finally`, even
when an assertion fails.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from twisted_keepalive import __version__

from .e2e import (
    FAST_CLIENT,
    Processes,
    clientIs,
    freePort,
    get,
    listening,
    server,
    status,
    waitFor,
)


@pytest_twisted.inlineCallbacks
def test_connectStatusMetricsKillRestartAndSigterm() -> Any:
    procs = Processes()
    try:
        port, sStatus, cStatus = freePort(), freePort(), freePort()
        srv = server(procs, "server", port, sStatus)
        yield waitFor(listening(sStatus), 20, "the server")
        cli = procs.start(
            "client",
            "--host",
            f"127.0.0.1:{port}",
            "--client-id",
            "e2e",
            "--status",
            f"tcp:{cStatus}:interface=127.0.0.1",
            *FAST_CLIENT,
        )
        yield waitFor(clientIs(cStatus, "connected"), 20, "the client to connect")
        yield deferLater(reactor, 0.5, lambda: None)  # a few heartbeats

        s = yield status(cStatus)
        assert s["mode"] == "client" and s["server"] == f"127.0.0.1:{port}"
        assert s["rtt"] is not None and 0 < s["rtt"] < 0.5
        assert s["reconnects"] == 0 and s["heartbeat_timeouts"] == 0 and s["queued"] == 0
        assert isinstance(s["connected_since"], float)
        t = yield status(sStatus)
        (conn,) = t["connections"]
        assert conn["client_id"] == "e2e" and conn["peer"].startswith("127.0.0.1:")
        assert set(conn) >= {"peer", "client_id", "connected_since", "last_received", "rtt"}
        assert t["evictions"] == 0

        for statusPort, wanted in (
            (cStatus, "keepalive_client_state"),
            (sStatus, "keepalive_server_connections"),
        ):
            text = yield get(f"http://127.0.0.1:{statusPort}/metrics")
            families = {f.name: f for f in text_string_to_metric_families(text.decode())}
            assert wanted in families
            assert "keepalive_rtt_seconds" in families
            assert "keepalive_frames" in families
            assert families["keepalive_build_info"].samples[0].labels["version"] == __version__
            assert "process_resident_memory_bytes" in families

        # SIGKILL the server, restart it on the same port: the client is back.
        srv.signal("KILL")
        yield srv.ended
        yield waitFor(clientIs(cStatus, "waiting"), 5, "the client to notice")
        srv = server(procs, "server2", port, sStatus)
        yield waitFor(listening(sStatus), 20, "the restarted server")
        took = yield waitFor(clientIs(cStatus, "connected"), 5, "the client to come back")
        assert took <= 0.5 + 0.5  # at most --max-delay after the server is up, plus polling
        s = yield status(cStatus)
        assert s["reconnects"] == 1

        cli.signal("TERM")
        srv.signal("TERM")
        codes = yield gatherResults([cli.ended, srv.ended])
        assert codes == [0, 0], (cli.err.decode()[-2000:], srv.err.decode()[-2000:])
    finally:
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_frozenServerDetectedAndFailedOver() -> Any:
    procs = Processes()
    try:
        portA, portB, statusA, statusB, cStatus = (freePort() for _ in range(5))
        a = server(procs, "a", portA, statusA)
        server(procs, "b", portB, statusB)
        yield waitFor(listening(statusA), 20, "server A")
        yield waitFor(listening(statusB), 20, "server B")
        procs.start(
            "client",
            "--host",
            f"127.0.0.1:{portA}",
            "--host",
            f"127.0.0.1:{portB}",
            "--status",
            f"tcp:{cStatus}:interface=127.0.0.1",
            *FAST_CLIENT,
        )
        yield waitFor(clientIs(cStatus, "connected", f"127.0.0.1:{portA}"), 20, "client on A")
        yield deferLater(reactor, 0.3, lambda: None)
        a.signal("STOP")  # frozen: no FIN, no RST, the socket stays open
        took = yield waitFor(
            clientIs(cStatus, "connected", f"127.0.0.1:{portB}"), 10, "the client on B"
        )
        # Detection (--timeout 0.8), one backoff (<= 0.5), a connect timeout on A (1 s:
        # its backlog still accepts, the handshake never completes), then B.
        assert took <= 0.8 + 0.5 + 1.0 + 3.0, took
        s = yield status(cStatus)
        assert s["heartbeat_timeouts"] == 1
    finally:
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_stdioLinesArriveAndComeBack() -> Any:
    procs = Processes()
    try:
        port, sStatus = freePort(), freePort()
        server(procs, "server", port, sStatus)
        yield waitFor(listening(sStatus), 20, "the server")
        cli = procs.start(
            "client", "--host", f"127.0.0.1:{port}", "--stdio", *FAST_CLIENT, logfile=True
        )
        lines = [f"line {i}".encode() for i in range(20)]
        for line in lines:
            cli.transport.write(line + b"\n")
        cli.transport.closeStdin()
        code = yield cli.ended
        assert code == 0, cli.err.decode()[-2000:]
        # The echo server sent every line back, in order, one per line.
        assert cli.out.decode().splitlines() == [line.decode() for line in lines]
        assert "20 lines delivered, 0 may be lost, 0 refused" in procs.log("client")
    finally:
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_portInUseIsOneLineAndNonZero() -> Any:
    procs = Processes()
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = procs.start("server", "--listen", f"tcp:{port}:interface=127.0.0.1")
        code = yield proc.ended
        output = (proc.out + proc.err).decode()
        assert code == 1
        assert f"keepconn: cannot listen on tcp:{port}:interface=127.0.0.1" in output
        assert "Traceback" not in output
    finally:
        busy.close()
        yield procs.cleanup()


@pytest_twisted.inlineCallbacks
def test_tacExampleBuildsTheServicesFromCode() -> Any:
    """docs/examples/keepconn.tac under twistd -ny: server, client, status."""
    import os

    from twisted.internet.protocol import ProcessProtocol

    from .e2e import TWISTD, Twistd, listening

    port, statusPort = freePort(), freePort()
    tac = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "keepconn.tac")
    process = Twistd("tac")
    assert isinstance(process, ProcessProtocol)
    env = {**os.environ, "KEEPCONN_PORT": str(port), "KEEPCONN_STATUS": str(statusPort)}
    reactor.spawnProcess(
        process, TWISTD, [TWISTD, "--pidfile=", "-ny", os.path.abspath(tac)], env=env
    )
    try:
        yield waitFor(listening(statusPort), 20, "the tac's server")

        @pytest_twisted.inlineCallbacks
        def clientIn() -> Any:
            s = yield status(statusPort)
            return [c["client_id"] for c in s["connections"]] == ["from-a-tac"]

        yield waitFor(clientIn, 10, "the tac's client")
    finally:
        process.signal("TERM")
        code = yield process.ended
    assert code == 0, process.err.decode()[-2000:]
