"""
Keep alive a connection to a server that does not speak our protocol:
here a tiny line server on 127.0.0.1 that answers PING with +PONG, as
Redis does.
"""

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Factory
from twisted.protocols.basic import LineReceiver

from twisted_keepalive import RawHeartbeatConfig, RawHeartbeatProtocol


class LineServer(LineReceiver):
    def lineReceived(self, line):
        if line == b"PING":
            self.sendLine(b"+PONG")


class KeepRedisAlive(RawHeartbeatProtocol):
    def rawDataReceived(self, data):
        if self.repliesMatched == 2:
            print(f"2 replies matched, smoothed RTT {self.rtt.srtt * 1000:.2f} ms")
            self.transport.loseConnection()

    def connectionClosed(self, reason):
        reactor.stop()


config = RawHeartbeatConfig(ping=b"PING\r\n", expect=rb"\+PONG\r\n", interval=0.1, timeout=0.5)
port = reactor.listenTCP(0, Factory.forProtocol(LineServer), interface="127.0.0.1")
factory = ClientFactory()
factory.protocol = lambda: KeepRedisAlive(config)
reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
reactor.run()
