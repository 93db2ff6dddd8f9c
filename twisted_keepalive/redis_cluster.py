"""
L{RedisCluster}: the cluster's shared state in one Redis server, through
txredisapi (Twisted-native).

Keys (C{P} is the prefix, C{keepconn:} by default):

    P nodes              set of node names (readers drop the dead ones)
    P node:NAME          the node's description, expires after the TTL
    P presence:NAME      hash client_id -> JSON, expires after the TTL
    P s:SESSION          hash: identity, owner, received, next, acked, first
    P m:SESSION          hash: sequence number -> message
    P chan:NAME          pub/sub channel of one node; P all: every node's

Each multi-key change is one Lua script, so it is atomic and one round
trip.  Scripts touch keys they compute (a node's presence, a session's two
hashes): one Redis server or a primary with replicas, not Redis Cluster.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from zope.interface import provider

from .cluster import (
    ClusterMember,
    NodeView,
    Presence,
    SavedSession,
    SessionDelta,
    SessionMoved,
    SessionRefused,
)
from .errors import (
    ClusterBusy,
    ClusterTimeout,
    ClusterUnavailable,
    NotDelivered,
    UnknownClient,
    peerText,
)
from .heartbeat import maybeGlobalReactor

# Lua's unpack() takes at most ~8000 values: long argument lists go in chunks.
_CHUNK = 1000

_VIEW = """
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local info = redis.call('GET', ARGV[1] .. 'node:' .. name)
  if info then
    out[#out + 1] = name
    out[#out + 1] = info
    out[#out + 1] = redis.call('HGETALL', ARGV[1] .. 'presence:' .. name)
  else
    redis.call('SREM', KEYS[1], name)
  end
end
return out
"""

# Find the node a client is on (the newest connection if a dead node's entry
# lingers) and publish to it: one round trip.
_SEND_TO = """
local best, since = nil, -1
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. name) == 1 then
    local entry = redis.call('HGET', ARGV[1] .. 'presence:' .. name, ARGV[2])
    if entry then
      local s = cjson.decode(entry)['since'] or 0
      if s > since then best, since = name, s end
    end
  end
end
if not best then return false end
return {best, redis.call('PUBLISH', ARGV[1] .. 'chan:' .. best, ARGV[3])}
"""

# ARGV: name info ttl_ms session_ttl_ms n prefix, n client/entry pairs, session ids.
_REFRESH = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[3])
local n = tonumber(ARGV[5])
local i = 7
while n > 0 do
  local take = math.min(n, CHUNK)
  redis.call('HSET', KEYS[3], unpack(ARGV, i, i + 2 * take - 1))
  i = i + 2 * take
  n = n - take
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
for j = i, #ARGV do
  redis.call('PEXPIRE', ARGV[6] .. 's:' .. ARGV[j], ARGV[4])
  redis.call('PEXPIRE', ARGV[6] .. 'm:' .. ARGV[j], ARGV[4])
end
return 1
""".replace("CHUNK", str(_CHUNK))

_CLAIM = """
local identity = redis.call('HGET', KEYS[1], 'identity')
if not identity then return false end
if identity ~= ARGV[1] then return {'refused'} end
local previous = redis.call('HGET', KEYS[1], 'owner') or ''
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'received', 'next', 'acked')
return {'ok', previous, f[1], f[2], f[3], redis.call('HGETALL', KEYS[2])}
"""

# ARGV: owner identity received next acked first ttl_ms full, then seq/message pairs.
_COMMIT = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 'moved' end
if not owner and ARGV[8] == '0' then return 'missing' end
local first = tonumber(ARGV[6])
if ARGV[8] == '1' then
  redis.call('DEL', KEYS[2])
else
  local old = tonumber(redis.call('HGET', KEYS[1], 'first') or first)
  for s = old, first - 1 do redis.call('HDEL', KEYS[2], s) end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'identity', ARGV[2], 'received', ARGV[3],
  'next', ARGV[4], 'acked', ARGV[5], 'first', ARGV[6])
local i = 9
while i <= #ARGV do
  local last = math.min(#ARGV, i + 2 * CHUNK - 1)
  redis.call('HSET', KEYS[2], unpack(ARGV, i, last))
  i = last + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return 'ok'
""".replace("CHUNK", str(_CHUNK))

_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


def parseRedisURL(url: str) -> tuple[str, int, int, str | None]:
    """
    C{redis://[:password@]host[:port][/db]} or C{unix:///path/to/socket[?db=N]}
    as (host or socket path, port (0 for a socket), db, password).

    @raise ValueError: with one line saying what is wrong.
    """
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        db = 0
        for part in parsed.query.split("&"):
            if part.startswith("db="):
                db = int(part[3:])
        if not parsed.path:
            raise ValueError(f"no socket path in {url!r}")
        return parsed.path, 0, db, parsed.password
    if parsed.scheme != "redis":
        raise ValueError(f"a cluster URL is redis://host:port/db or unix:///path, not {url!r}")
    try:
        port = parsed.port or 6379
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    path = parsed.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database in {url!r} must be a number")
    return parsed.hostname or "127.0.0.1", port, int(path or 0), parsed.password


class _Pending:
    __slots__ = ("call", "count", "deferred", "expected")

    def __init__(self, deferred: Deferred[Any], call: IDelayedCall, expected: int) -> None:
        self.deferred = deferred
        self.call = call
        self.expected = expected
        self.count = 0


class RedisCluster:
    """
    A node's link to the cluster, through one Redis server: a command
    connection and a subscriber connection, both reconnecting by
    themselves.

    While Redis cannot be reached every call fails at once with
    L{ClusterUnavailable}; the node keeps serving its own clients.  The
    link is checked every C{ttl / 3} seconds (when this node also renews
    its presence): one log line when it goes down, one when it comes back,
    and then the node writes its presence and its live sessions again (a
    restarted Redis may have lost them).

    @ivar ttl: a node that stops renewing its presence (killed) drops out
        of it after this many seconds.
    @ivar requestTimeout: how long C{sendTo} and C{broadcast} wait for the
        other nodes' answers.
    @ivar maxPending: cross-node requests waiting at most; more fail at once
        with L{ClusterBusy}.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        node: str,
        *,
        ttl: float = 6.0,
        sessionTTL: float = 60.0,
        replyTimeout: float = 2.0,
        requestTimeout: float = 5.0,
        maxPending: int = 10_000,
        prefix: str = "keepconn:",
        clock: IReactorTime | None = None,
    ) -> None:
        self.host, self.port, self.db, self.password = parseRedisURL(url)
        if not node or any(c in node for c in " \n:/*?[]"):
            raise ValueError(f"a node name is letters, digits, '-', '_' or '.', not {node!r}")
        if ttl <= 0:
            raise ValueError(f"the presence TTL must be > 0 seconds, not {ttl!r}")
        self.url = url
        self.node = node
        self.ttl = ttl
        self.sessionTTL = sessionTTL
        self.replyTimeout = replyTimeout
        self.requestTimeout = requestTimeout
        self.maxPending = maxPending
        self.prefix = prefix
        self.clock = clock
        self.up = False
        self.stateChanges = 0
        self.sentAcross = 0
        self.receivedAcross = 0
        self.failedAcross = 0
        self.commits = 0
        self._member: ClusterMember | None = None
        self._redis: Any = None
        self._factory: Any = None
        self._subscriber: Any = None
        self._subscribed = False
        self._loop: LoopingCall | None = None
        self._pending: dict[int, _Pending] = {}
        self._nextRequest = 0
        self._checking = False
        self._downReason = ""
        self._channel = f"{prefix}chan:{node}".encode()
        self._all = f"{prefix}all".encode()

    # Keys

    def _key(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    def _sessionKeys(self, sessionId: bytes) -> list[str]:
        sid = sessionId.hex()
        return [self._key("s:", sid), self._key("m:", sid)]

    # Lifecycle

    def start(self, member: ClusterMember) -> None:
        """
        Connect (and keep reconnecting) and start renewing this node's
        presence.  Returns at once: the node serves while Redis is away.
        """
        import txredisapi

        self._member = member
        endpoint = self._endpoint()
        factory = txredisapi.RedisFactory(
            None,
            self.db,
            1,
            isLazy=True,
            charset=None,
            password=self.password,
            replyTimeout=self.replyTimeout,
            convertNumbers=False,
        )
        factory.maxDelay = 1.0
        factory.initialDelay = 0.2
        factory.noisy = False
        self._factory = factory
        self._redis = factory.handler
        _quietly(factory.startConnecting, endpoint)

        cluster = self

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def connectionMade(self) -> Any:
                d = super().connectionMade()

                def subscribe(_: object) -> Any:
                    if self.connected:
                        sub = self.subscribe([cluster._channel.decode(), cluster._all.decode()])
                        sub.addCallback(lambda _: cluster._subscribedNow(True))
                        sub.addErrback(lambda f: None)
                    return None

                if isinstance(d, Deferred):
                    d.addCallback(subscribe)
                else:
                    subscribe(None)
                return d

            def connectionLost(self, why: Failure) -> None:
                cluster._subscribedNow(False)
                super().connectionLost(why)

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                cluster._message(message)

        sub = txredisapi.RedisFactory(
            None,
            None,
            1,
            isLazy=True,
            charset=None,
            password=self.password,
            convertNumbers=False,
        )
        sub.protocol = Subscriber
        sub.maxDelay = 1.0
        sub.initialDelay = 0.2
        sub.noisy = False
        self._subscriber = sub
        _quietly(sub.startConnecting, endpoint)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = maybeGlobalReactor(self.clock)
        self._loop.start(self.ttl / 3, now=False)
        maybeGlobalReactor(self.clock).callLater(0.05, self._tick)

    def _endpoint(self) -> Any:
        from twisted.internet import reactor

        if self.port == 0:
            return UNIXClientEndpoint(reactor, self.host, timeout=2)
        return TCP4ClientEndpoint(reactor, self.host, self.port, timeout=2)

    def stop(self) -> Deferred[None]:
        """
        Leave: withdraw this node's presence (best effort) and disconnect.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for pending in list(self._pending.values()):
            if pending.call.active():
                pending.call.cancel()
            pending.deferred.errback(ClusterUnavailable("the node is stopping"))
        self._pending.clear()
        factory, sub = self._factory, self._subscriber
        if factory is None:
            return succeed(None)

        def disconnect(_: object) -> Deferred[Any]:
            from twisted.internet.defer import DeferredList

            return DeferredList([factory.disconnect(), sub.disconnect()], consumeErrors=True)

        if self.up:
            d = self._call(
                "eval",
                "redis.call('SREM', KEYS[1], ARGV[1]) redis.call('DEL', KEYS[2], KEYS[3])",
                [
                    self._key("nodes"),
                    self._key("node:", self.node),
                    self._key("presence:", self.node),
                ],
                [self.node],
            )
            d.addErrback(lambda f: None)
        else:
            d = succeed(None)
        d.addCallback(disconnect)
        d.addCallback(lambda _: None)
        return d

    # Health

    def _connected(self) -> bool:
        return self._factory is not None and self._factory.size > 0

    def _subscribedNow(self, subscribed: bool) -> None:
        self._subscribed = subscribed
        if subscribed and not self.up:
            self._tick()  # rejoin now, not at the next renewal

    def _setUp(self, up: bool, why: str = "") -> None:
        if up == self.up:
            return
        self.up = up
        self.stateChanges += 1
        member = self._member
        if up:
            self.log.info(
                "Cluster: Redis {url} reachable; node {node} rejoins", url=self.url, node=self.node
            )
            if member is not None:
                member.backendUp()
        else:
            self.log.warn(
                "Cluster: Redis {url} unreachable ({why}); serving local clients only",
                url=self.url,
                why=why,
            )
            if member is not None:
                member.backendDown()

    def _tick(self) -> None:
        """
        Every C{ttl / 3}: check the link, renew this node's presence and the
        TTL of its live sessions.
        """
        if not self._connected():
            self._setUp(False, "not connected")
            return
        if not self._subscribed:
            # Without it nothing pushed from other nodes reaches us.
            self._setUp(False, "subscriber not connected")
            return
        if self._checking:
            return
        self._checking = True
        d = self._refresh()

        def done(result: object) -> None:
            self._checking = False
            if isinstance(result, Failure):
                self._setUp(False, _why(result))
            else:
                self._setUp(True)

        d.addBoth(done)

    def _refresh(self) -> Deferred[Any]:
        member = self._member
        assert member is not None
        presence = member.localPresence()
        args: list[Any] = [
            self.node,
            json.dumps(member.nodeInfo()),
            int(self.ttl * 1000),
            int((self.sessionTTL + self.ttl) * 1000),
            len(presence),
            self.prefix,
        ]
        for p in presence:
            args += [p.clientId, json.dumps(_entry(p))]
        args += [s.hex() for s in member.liveSessions()]
        return self._raw(
            "eval",
            _REFRESH,
            [
                self._key("nodes"),
                self._key("node:", self.node),
                self._key("presence:", self.node),
            ],
            args,
        )

    def _raw(self, method: str, *args: Any) -> Deferred[Any]:
        """A command, whatever the state (the health check's own)."""
        if not self._connected():
            return fail(ClusterUnavailable(f"Redis {self.url} is not connected"))
        try:
            return getattr(self._redis, method)(*args)  # type: ignore[no-any-return]
        except Exception as e:
            return fail(ClusterUnavailable(f"Redis {self.url}: {e}"))

    def _call(self, method: str, *args: Any) -> Deferred[Any]:
        """
        A command, failing at once with L{ClusterUnavailable} while Redis is
        down; a connection error or timeout marks it down.
        """
        if not self._connected():
            self._setUp(False, "connection lost")
        if not self.up:
            return fail(ClusterUnavailable(f"Redis {self.url} is unreachable"))
        d = self._raw(method, *args)

        def failed(f: Failure) -> Failure:
            import txredisapi

            if f.check(txredisapi.ConnectionError, ClusterUnavailable):
                self._setUp(False, _why(f))
                return Failure(ClusterUnavailable(f"Redis {self.url}: {_why(f)}"))
            return f

        return d.addErrback(failed)

    # Presence

    def clientConnected(self, presence: Presence) -> None:
        self._call(
            "eval",
            "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) redis.call('PEXPIRE', KEYS[1], ARGV[3])",
            [self._key("presence:", self.node)],
            [presence.clientId, json.dumps(_entry(presence)), int(self.ttl * 1000)],
        ).addErrback(lambda f: None)  # the next refresh writes it all again

    def clientDisconnected(self, clientId: str) -> None:
        self._call("hdel", self._key("presence:", self.node), clientId).addErrback(lambda f: None)

    def view(self) -> Deferred[list[NodeView]]:
        """
        Every live node with its clients, read in one round trip.
        """
        d = self._call("eval", _VIEW, [self._key("nodes")], [self.prefix])

        def parse(reply: list[Any]) -> list[NodeView]:
            nodes = []
            for i in range(0, len(reply), 3):
                name = _text(reply[i])
                info = json.loads(reply[i + 1])
                flat = reply[i + 2] or []
                clients = []
                for j in range(0, len(flat), 2):
                    e = json.loads(flat[j + 1])
                    clients.append(
                        Presence(_text(flat[j]), name, e["since"], e.get("rtt"), e.get("peer", ""))
                    )
                clients.sort(key=lambda p: p.clientId)
                nodes.append(NodeView(name, info, clients))
            nodes.sort(key=lambda n: n.name)
            return nodes

        return d.addCallback(parse)

    # Messages across nodes

    def _request(self, expected: int = 1) -> tuple[int, Deferred[Any]]:
        if len(self._pending) >= self.maxPending:
            raise ClusterBusy(f"{len(self._pending)} cross-node requests already waiting")
        self._nextRequest += 1
        rid = self._nextRequest
        d: Deferred[Any] = Deferred()
        call = maybeGlobalReactor(self.clock).callLater(self.requestTimeout, self._expire, rid)
        self._pending[rid] = _Pending(d, call, expected)
        return rid, d

    def _expire(self, rid: int) -> None:
        pending = self._pending.pop(rid, None)
        if pending is None:
            return
        self.failedAcross += 1
        if pending.expected > 1 or pending.count:
            pending.deferred.callback(pending.count)  # a broadcast: what was counted
        else:
            pending.deferred.errback(
                ClusterTimeout(f"no answer from the client's node in {self.requestTimeout}s")
            )

    def _drop(self, rid: int) -> None:
        pending = self._pending.pop(rid, None)
        if pending is not None and pending.call.active():
            pending.call.cancel()

    def sendTo(self, clientId: str, message: bytes) -> Deferred[str]:
        """
        Push C{message} to C{clientId} on whichever node has it.  Fires with
        that node's name once the message is in the client's session (saved
        with it), or fails: L{UnknownClient}, L{NotDelivered},
        L{ClusterUnavailable}, L{ClusterBusy}, L{ClusterTimeout}.
        """
        try:
            rid, answer = self._request()
        except ClusterBusy as e:
            return fail(e)
        header = json.dumps({"id": rid, "from": self.node, "to": clientId}).encode()
        payload = b"S" + header + b"\n" + message
        d = self._call("eval", _SEND_TO, [self._key("nodes")], [self.prefix, clientId, payload])

        def published(reply: Any) -> Deferred[str]:
            if not reply:
                self._drop(rid)
                raise UnknownClient(clientId)
            node, receivers = _text(reply[0]), int(reply[1])
            if receivers == 0:
                self._drop(rid)
                raise ClusterUnavailable(f"node {node} is not listening")
            self.sentAcross += 1
            return answer.addCallback(lambda _: node)

        def failed(f: Failure) -> Failure:
            self._drop(rid)
            self.failedAcross += 1
            return f

        return d.addCallback(published).addErrback(failed)

    def broadcast(self, message: bytes, exclude: str | None = None) -> Deferred[int]:
        """
        Push C{message} to every client of every node (this one included);
        fires with how many took it, counted as the nodes answer (those
        that do not answer within C{requestTimeout} are not counted).
        """
        try:
            rid, answer = self._request(expected=0)
        except ClusterBusy as e:
            return fail(e)
        header = json.dumps({"id": rid, "from": self.node, "except": exclude}).encode()
        d = self._call("publish", self._all.decode(), b"B" + header + b"\n" + message)

        def published(receivers: int) -> Deferred[int]:
            pending = self._pending.get(rid)
            if pending is not None:
                pending.expected = int(receivers)
                if pending.expected <= 0:
                    self._finish(rid)
            return answer

        def failed(f: Failure) -> Failure:
            self._drop(rid)
            return f

        return d.addCallback(published).addErrback(failed)

    def _finish(self, rid: int) -> None:
        pending = self._pending.pop(rid, None)
        if pending is not None:
            if pending.call.active():
                pending.call.cancel()
            pending.deferred.callback(pending.count)

    def _reply(self, to: str, body: dict[str, Any]) -> None:
        answer = b"R" + json.dumps(body).encode()
        self._call("publish", f"{self.prefix}chan:{to}", answer).addErrback(lambda f: None)

    def sessionClaimed(self, sessionId: bytes, previousOwner: str) -> None:
        """Tell the session's previous node (best effort) that it moved."""
        node = previousOwner.partition("#")[0]
        body = json.dumps({"session": sessionId.hex(), "owner": previousOwner}).encode()
        self._call("publish", f"{self.prefix}chan:{node}", b"C" + body).addErrback(lambda f: None)

    def _message(self, raw: Any) -> None:
        """A pub/sub message: a push for a client here, a broadcast, or an answer."""
        if not isinstance(raw, bytes) or not raw:
            return
        kind, body = raw[:1], raw[1:]
        try:
            if kind == b"R":
                self._answer(json.loads(body))
                return
            if kind == b"C":
                claimed = json.loads(body)
                if self._member is not None:
                    self._member.sessionMoved(
                        bytes.fromhex(claimed["session"]), str(claimed["owner"])
                    )
                return
            header, _, message = body.partition(b"\n")
            meta = json.loads(header)
            rid, origin = int(meta["id"]), str(meta["from"])
        except (ValueError, KeyError, TypeError):
            self.log.warn("Cluster: malformed message on {channel} ignored", channel=self._channel)
            return
        member = self._member
        if member is None:
            return
        self.receivedAcross += 1
        if kind == b"B":
            exclude = meta.get("except")
            count = member.broadcastLocal(message, None if exclude is None else str(exclude))
            self._reply(origin, {"id": rid, "count": count})
        elif kind == b"S":
            clientId = str(meta.get("to"))
            d = member.deliverLocal(clientId, message)
            d.addCallback(lambda _: self._reply(origin, {"id": rid, "ok": True}))
            d.addErrback(
                lambda f: self._reply(
                    origin, {"id": rid, "error": type(f.value).__name__, "why": str(f.value)}
                )
            )

    def _answer(self, body: dict[str, Any]) -> None:
        rid = body.get("id")
        pending = self._pending.get(rid) if isinstance(rid, int) else None
        if pending is None:
            return  # too late: already timed out
        if "count" in body:
            pending.count += int(body["count"])
            pending.expected -= 1
            if pending.expected <= 0:
                self._finish(rid)  # type: ignore[arg-type]
            return
        self._drop(rid)  # type: ignore[arg-type]
        if body.get("ok"):
            pending.deferred.callback(None)
            return
        self.failedAcross += 1
        error = {"UnknownClient": UnknownClient}.get(str(body.get("error")))
        why = peerText(str(body.get("why", "")))
        if error is UnknownClient:
            pending.deferred.errback(UnknownClient(why))
        else:
            pending.deferred.errback(NotDelivered(why))

    # Sessions

    def claimSession(
        self, sessionId: bytes, identity: bytes, owner: str
    ) -> Deferred[SavedSession | None]:
        """
        Take a saved session over for a resume on this node: L{None} if
        Redis has none under that id.

        @raise SessionRefused: (in the Deferred) it belongs to another identity.
        """
        d = self._call("eval", _CLAIM, self._sessionKeys(sessionId), [identity, owner])

        def parse(reply: Any) -> SavedSession | None:
            if not reply:
                return None
            if _text(reply[0]) == "refused":
                raise SessionRefused("the saved session belongs to another client")
            flat = reply[5] or []
            messages = sorted((int(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2))
            return SavedSession(
                received=int(reply[2] or 0),
                nextSeq=int(reply[3] or 1),
                acked=int(reply[4] or 0),
                messages=messages,
                previousOwner=_text(reply[1]),
            )

        return d.addCallback(parse)

    def commitSession(
        self, sessionId: bytes, identity: bytes, owner: str, delta: SessionDelta, ttl: float
    ) -> Deferred[None]:
        """
        Save what changed in a session, atomically; fails with
        L{SessionMoved} if another node claimed it meanwhile.
        """
        args: list[Any] = [
            owner,
            identity,
            delta.received,
            delta.nextSeq,
            delta.acked,
            delta.first,
            max(1, int(ttl * 1000)),
            "1" if delta.full else "0",
        ]
        for seq, message in delta.messages:
            args += [seq, message]
        d = self._call("eval", _COMMIT, self._sessionKeys(sessionId), args)

        def check(reply: Any) -> Deferred[None] | None:
            answer = _text(reply)
            if answer == "moved":
                raise SessionMoved("the session was resumed on another node")
            if answer == "missing":
                # Expired or lost with a Redis restart: write it all.
                full = SessionDelta(
                    delta.received, delta.nextSeq, delta.acked, delta.first, [], True
                )
                return self._recommit(sessionId, identity, owner, full, ttl)
            self.commits += 1
            return None

        return d.addCallback(check)

    #: Set by the node: the full state of a session, for a commit Redis
    #: answered "missing" to.
    fullState: Callable[[bytes], SessionDelta | None] | None = None

    def _recommit(
        self, sessionId: bytes, identity: bytes, owner: str, delta: SessionDelta, ttl: float
    ) -> Deferred[None]:
        state = self.fullState(sessionId) if self.fullState is not None else None
        if state is None:
            return succeed(None)
        return self.commitSession(sessionId, identity, owner, state, ttl)

    def deleteSession(self, sessionId: bytes, owner: str) -> Deferred[None]:
        """Forget a session this node still owns (its grace ran out here)."""
        d = self._call("eval", _DELETE, self._sessionKeys(sessionId), [owner])
        return d.addCallback(lambda _: None)


@provider(ILogObserver)
def _discard(event: Any) -> None:
    """Drop a log event."""


def _quietly(start: Callable[[Any], None], endpoint: Any) -> None:
    """
    Start txredisapi's connections without their ClientServices logging
    each retry (a line a second per connection while Redis is away): this
    node logs the outage once, and once when it ends.
    """
    from twisted.application.internet import ClientService

    loud = ClientService._log
    ClientService._log = Logger(observer=_discard)
    try:
        start(endpoint)
    finally:
        ClientService._log = loud


def _entry(p: Presence) -> dict[str, Any]:
    return {"since": p.since, "rtt": p.rtt, "peer": p.peer}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _why(f: Failure) -> str:
    text = str(f.value) or type(f.value).__name__
    return text.splitlines()[0] if text else type(f.value).__name__


def defaultNodeName() -> str:
    """This host's name and process id: unique on a machine and across them."""
    import socket

    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"
