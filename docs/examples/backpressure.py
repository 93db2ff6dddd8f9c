"""
Backpressure and delivery receipts: a producer registered once with the
client factory is paused while its buffer is full, instead of messages
being dropped; each sendConfirmed() Deferred fires when the server has
acknowledged that message.
"""

from twisted.internet import reactor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from twisted_keepalive import HeartbeatConfig
from twisted_keepalive.client import KeepaliveClientFactory
from twisted_keepalive.server import KeepaliveServerFactory

TOTAL = 5000


@implementer(IPushProducer)
class Numbers:
    """Sends TOTAL messages as fast as the factory lets it."""

    def __init__(self, factory):
        self.factory = factory
        self.next = 0
        self.paused = False
        self.pauses = 0

    def run(self):
        while not self.paused and self.next < TOTAL:
            self.next += 1
            message = b"message %d" % self.next
            if self.next == TOTAL:
                receipt = self.factory.sendConfirmed(message)
                receipt.addCallbacks(acknowledged, failed)
            else:
                self.factory.sendMessage(message)  # pauses us when the buffer fills

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        reactor.callLater(0, self.run)

    def stopProducing(self):
        self.paused = True


def acknowledged(seq):
    print(f"the last message was acknowledged as number {seq}")
    print(f"server got {len(received)} messages; the producer was paused {producer.pauses} times")
    client.stopTrying()
    reactor.callLater(0.1, reactor.stop)


def failed(failure):
    print("not delivered:", failure.getErrorMessage())
    reactor.stop()


received = []


class Server(KeepaliveServerFactory):
    def messageReceived(self, protocol, message):
        received.append(message)


server = Server(HeartbeatConfig(interval=1.0, timeout=3.0))
port = reactor.listenTCP(0, server, interface="127.0.0.1")
client = KeepaliveClientFactory(
    HeartbeatConfig(interval=1.0, timeout=3.0),
    servers=[f"127.0.0.1:{port.getHost().port}"],
    resume=True,
    queueSize=100,  # a small buffer: the producer is paused, nothing is dropped
)
producer = Numbers(client)
client.registerProducer(producer, streaming=True)
producer.run()  # the first 100 wait for the connection, then it pauses
client.connect()
reactor.run()
