"""
twistd -ny docs/examples/keepconn.tac: the plugin's server and client
built from code, with a status endpoint and graceful signals.  Ports come
from KEEPCONN_PORT and KEEPCONN_STATUS (9000 and 9100 by default).
"""

import os

from twisted.application.service import Application

from twisted_keepalive import HeartbeatConfig, jitteredBackoff
from twisted_keepalive.service import KeepaliveClientService, KeepaliveServerService
from twisted_keepalive.signals import GracefulSignals
from twisted_keepalive.status import StatusService

port = int(os.environ.get("KEEPCONN_PORT", "9000"))
statusPort = int(os.environ.get("KEEPCONN_STATUS", "9100"))

application = Application("keepconn")
GracefulSignals().setServiceParent(application)

server = KeepaliveServerService(
    f"tcp:{port}:interface=127.0.0.1",
    HeartbeatConfig(interval=5.0, timeout=15.0),
    mode="echo",
    maxConnections=1000,
)
server.setServiceParent(application)
StatusService(f"tcp:{statusPort}", server).setServiceParent(application)

client = KeepaliveClientService(
    HeartbeatConfig(interval=1.0, timeout=3.0, clientId="from-a-tac"),
    [f"127.0.0.1:{port}"],
    retryPolicy=jitteredBackoff(initialDelay=0.2, maxDelay=2.0),
)
client.setServiceParent(application)
