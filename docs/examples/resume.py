"""
Exactly once across a dropped connection: a session (resume=True).  A fault
proxy on 127.0.0.1 resets the link as soon as the first message arrives.
"""

from twisted.internet import reactor

from twisted_keepalive import HeartbeatConfig
from twisted_keepalive.backoff import jitteredBackoff
from twisted_keepalive.client import KeepaliveClientFactory
from twisted_keepalive.server import KeepaliveServerFactory
from twisted_keepalive.testing import FaultProxy

received = []


class Server(KeepaliveServerFactory):
    def messageReceived(self, protocol, message):
        received.append(message)
        if len(received) == 1:
            proxy.reset()  # the connection dies with the other messages in flight

    def heartbeatSessionStarted(self, protocol, event):
        if event.resumed:  # the client is back: it sends what we lack, we tell it what we have
            reactor.callLater(0.5, finish)


def finish():
    expected = [b"message %d" % i for i in range(100)]
    print("server got each message once, in order:", received == expected)
    print("sessions resumed:", server.sessionsResumed)
    client.stopTrying()
    reactor.callLater(0.1, reactor.stop)


server = Server(HeartbeatConfig(interval=1.0, timeout=3.0))
port = reactor.listenTCP(0, server, interface="127.0.0.1")
proxy = FaultProxy("127.0.0.1", port.getHost().port)
client = KeepaliveClientFactory(
    HeartbeatConfig(interval=0.5, timeout=1.5),
    servers=[f"127.0.0.1:{proxy.listen()}"],
    resume=True,  # numbered, acknowledged, replayed after a reconnection
    retryPolicy=jitteredBackoff(initialDelay=0.05, maxDelay=0.2),
)
for i in range(100):
    client.sendMessage(b"message %d" % i)  # kept until the server acknowledges it
client.connect()
reactor.run()
