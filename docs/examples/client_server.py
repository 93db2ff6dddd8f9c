"""
A server that echoes and evicts silent clients, and a client that
heartbeats, reconnects and queues messages: both on 127.0.0.1.
"""

from twisted.internet import reactor

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import ClientState, KeepaliveClientFactory
from twisted_keepalive.server import KeepaliveServerFactory


class EchoServerFactory(KeepaliveServerFactory):
    def clientConnected(self, protocol):
        print("server: client", protocol.core.peerHello.clientId, "connected")

    def messageReceived(self, protocol, message):
        protocol.sendMessage(b"echo: " + message)


class Client(HeartbeatProtocol):
    def messageReceived(self, message):
        print("client: got", message.decode())

    def pongReceived(self, rtt):
        print("client: heartbeat answered, RTT measured")
        self.factory.stopTrying()  # one round trip is enough for this example


def stopWhenStopped(old, new):
    if new is ClientState.STOPPED:
        reactor.callLater(0.1, reactor.stop)


server = EchoServerFactory(HeartbeatConfig(interval=1.0, timeout=3.0))
port = reactor.listenTCP(0, server, interface="127.0.0.1")

client = KeepaliveClientFactory(
    HeartbeatConfig(interval=0.2, timeout=0.6, clientId="example"),
    retryPolicy=jitteredBackoff(initialDelay=0.5, maxDelay=5.0),
)
client.protocol = Client
client.addStateObserver(stopWhenStopped)
client.sendMessage(b"hello")  # queued until the handshake completes
reactor.connectTCP("127.0.0.1", port.getHost().port, client)
reactor.run()
