"""
Test your own HeartbeatProtocol subclass deterministically: a client and
a server joined in memory, on a fake clock.
"""

from twisted.internet.task import Clock

from twisted_keepalive import HeartbeatConfig, HeartbeatProtocol, HeartbeatTimeout, Role
from twisted_keepalive.testing import MemoryPair


class Counter(HeartbeatProtocol):
    """The protocol under test: it counts what it receives."""

    received = 0

    def messageReceived(self, message):
        self.received += 1


clock = Clock()
client = Counter(HeartbeatConfig(interval=1.0, timeout=3.0), role=Role.CLIENT, clock=clock)
server = Counter(HeartbeatConfig(interval=1.0, timeout=3.0), role=Role.SERVER, clock=clock)
pair = MemoryPair(client, server, clock).connect()

client.sendMessage(b"one")
pair.pump()
assert server.received == 1

pair.serverToClient = False  # the server's replies vanish, as in a NAT timeout
pair.advance(3.0, step=0.5)  # three seconds pass, half a second at a time
assert isinstance(client.closeReason.value, HeartbeatTimeout)
print("dead peer detected after", client.closeReason.value.silence, "s of silence")
