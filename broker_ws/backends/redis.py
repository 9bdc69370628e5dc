"""Redis backend: one bus and one state for every process of a deployment.

* Quotes: ``HSET last`` and ``PUBLISH`` in one pipelined round trip. Each
  server process holds ONE pub/sub connection and subscribes to a symbol's
  channel only while a local session wants it, so a quote costs one Redis
  delivery per interested process, not per session.
* Instrument statuses: like quotes, ``HSET <prefix>:status`` and ``PUBLISH`` on
  the symbol's quote channel in one round trip, so they keep their order with
  the quotes.
* Account frames arrive already numbered and stored by the database
  outbox; Redis only carries them to the server processes, fast. What a
  Redis outage loses, the servers read back from the outbox.
* Live account state: ``SET <prefix>:state:<marker>:<login>`` with an expiry
  of :data:`STATE_TTL` and ``PUBLISH`` on the login's channel, in one
  pipelined round trip. The key only answers REST snapshots; it expires so
  that the state of a login nobody publishes any more does not stay forever.
* Presence: each server process keeps its sessions per login in a hash of its
  own, ``<prefix>:presence:<process>``, which expires unless the process
  refreshes it, and names itself in the set ``<prefix>:presence``; readers sum
  the hashes that still exist and forget the names whose hash has expired.

Connection settings are explicit because redis-py's defaults bite here
(see docs/deployment.md): commands get a 5 s ``socket_timeout``
so a dead Redis cannot hang a save; the pub/sub connection gets none,
because it blocks on reads by design, and relies on a periodic PING
(``health_check_interval``) to notice a dead peer. Pools block instead of
raising "Too many connections" when a connect storm briefly needs more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aredis
from redis.exceptions import RedisError

from broker_ws.backends.base import Backend, MessageHandler, Subscriber

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 5.0
POOL_WAIT = 5.0
HEALTH_CHECK_INTERVAL = 10
READ_POLL = 5.0
#: How long a new subscription waits for Redis to confirm it, and a subscribe
#: for the last quotes (seconds). Short on purpose: a stalled Redis must not
#: hold up authorizations, and nothing depends on the wait for correctness
#: (account frames the bus misses are read from the outbox; quotes follow
#: once the subscription is live).
CONFIRM_TIMEOUT = 1.0
#: Seconds a login's last published state is kept for REST snapshots (each
#: publish renews it): a week, so that a state outlives a weekend or a holiday
#: without quotes, and the state of a login nobody publishes any more goes away.
STATE_TTL = 7 * 24 * 3600


def _pool_kwargs(max_connections: int) -> dict[str, Any]:
    return {
        "max_connections": max_connections,
        "timeout": POOL_WAIT,
        "socket_timeout": COMMAND_TIMEOUT,
        "socket_connect_timeout": COMMAND_TIMEOUT,
    }


class RedisBackend(Backend):
    """Publisher half over a thread-safe sync pool; async pools per event loop."""

    def __init__(self, url: str, prefix: str, max_connections: int) -> None:
        self.url = url
        self.prefix = prefix
        self.max_connections = max_connections
        self._sync: redis.Redis | None = None
        self._sync_lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    # --- keys ------------------------------------------------------------
    def last_key(self) -> str:
        return f"{self.prefix}:last"

    def status_key(self) -> str:
        """The last instrument status of each symbol (a hash, like :meth:`last_key`)."""
        return f"{self.prefix}:status"

    def state_key(self, login: str, marker: str) -> str:
        """``login``'s last state of ``marker`` (markers are letters and digits, so
        the ``:`` after them ends them, whatever the login holds)."""
        return f"{self.prefix}:state:{marker}:{login}"

    def presence_key(self) -> str:
        """The set of the server processes that have a presence record."""
        return f"{self.prefix}:presence"

    def presence_record_key(self, process: str) -> str:
        """A server process's sessions per login (a hash that expires)."""
        return f"{self.prefix}:presence:{process}"

    # --- clients ---------------------------------------------------------
    @property
    def sync_client(self) -> redis.Redis:
        if self._sync is None:
            with self._sync_lock:
                if self._sync is None:
                    pool = redis.BlockingConnectionPool.from_url(
                        self.url, **_pool_kwargs(self.max_connections)
                    )
                    self._sync = redis.Redis(connection_pool=pool)
        return self._sync

    def async_client(self) -> aredis.Redis:
        """The command client of the running event loop."""
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            pool = aredis.BlockingConnectionPool.from_url(
                self.url, **_pool_kwargs(self.max_connections)
            )
            client = aredis.Redis(connection_pool=pool)
            self._async[loop] = client
        return client

    # --- publisher half ----------------------------------------------------
    def publish_quote(self, channel: str, symbol: str, frame: str) -> None:
        pipe = self.sync_client.pipeline(transaction=False)
        pipe.hset(self.last_key(), symbol, frame)
        pipe.publish(channel, frame)
        pipe.execute()

    async def apublish_quote(self, channel: str, symbol: str, frame: str) -> None:
        pipe = self.async_client().pipeline(transaction=False)
        pipe.hset(self.last_key(), symbol, frame)
        pipe.publish(channel, frame)
        await pipe.execute()

    def publish_status(self, channel: str, symbol: str, frame: str) -> None:
        pipe = self.sync_client.pipeline(transaction=False)
        pipe.hset(self.status_key(), symbol, frame)
        pipe.publish(channel, frame)
        pipe.execute()

    async def apublish_status(self, channel: str, symbol: str, frame: str) -> None:
        pipe = self.async_client().pipeline(transaction=False)
        pipe.hset(self.status_key(), symbol, frame)
        pipe.publish(channel, frame)
        await pipe.execute()

    def publish(self, channel: str, payload: str) -> None:
        self.sync_client.publish(channel, payload)

    async def apublish(self, channel: str, payload: str) -> None:
        await self.async_client().publish(channel, payload)

    def publish_many(self, messages: Sequence[tuple[str, str]]) -> None:
        # One round trip for everything a commit sends, in order.
        pipe = self.sync_client.pipeline(transaction=False)
        for channel, payload in messages:
            pipe.publish(channel, payload)
        pipe.execute()

    # --- live account state ------------------------------------------------
    def publish_state(self, channel: str, login: str, marker: str, frame: str) -> None:
        pipe = self.sync_client.pipeline(transaction=False)
        pipe.set(self.state_key(login, marker), frame, ex=STATE_TTL)
        pipe.publish(channel, frame)
        pipe.execute()

    async def apublish_state(self, channel: str, login: str, marker: str, frame: str) -> None:
        pipe = self.async_client().pipeline(transaction=False)
        pipe.set(self.state_key(login, marker), frame, ex=STATE_TTL)
        pipe.publish(channel, frame)
        await pipe.execute()

    def read_states(
        self, logins: Sequence[str], markers: Sequence[str]
    ) -> dict[tuple[str, str], str]:
        pairs = [(login, marker) for login in logins for marker in markers]
        if not pairs:
            return {}
        values = self.sync_client.mget([self.state_key(*pair) for pair in pairs])
        return {
            pair: value.decode() if isinstance(value, bytes) else value
            for pair, value in zip(pairs, values, strict=True)
            if value is not None
        }

    # --- presence ----------------------------------------------------------
    async def aput_presence(
        self, process: str, counts: Mapping[str, int], gone: Iterable[str] | None, ttl: float
    ) -> bool:
        key = self.presence_record_key(process)
        ttl_ms = max(1, int(ttl * 1000))
        # MULTI: a reader sees the record before or after, never half rewritten.
        pipe = self.async_client().pipeline(transaction=True)
        if gone is None:
            pipe.delete(key)
        else:
            pipe.pexpire(key, ttl_ms)  # 0: the record expired (or Redis restarted)
        if counts:
            pipe.hset(key, mapping=dict[Any, Any](counts))
        if gone:
            pipe.hdel(key, *gone)
        pipe.pexpire(key, ttl_ms)
        pipe.sadd(self.presence_key(), process)
        # The set outlives every record written with the same ttl, and vanishes
        # once no process refreshes it.
        pipe.pexpire(self.presence_key(), ttl_ms)
        results = await pipe.execute()
        return gone is None or bool(results[0])

    async def adrop_presence(self, process: str) -> None:
        pipe = self.async_client().pipeline(transaction=True)
        pipe.delete(self.presence_record_key(process))
        pipe.srem(self.presence_key(), process)
        await pipe.execute()

    def _decode_presence(
        self, processes: list[str], records: list[dict[bytes, bytes]]
    ) -> tuple[dict[str, dict[str, int]], list[str]]:
        live: dict[str, dict[str, int]] = {}
        expired = []
        for process, record in zip(processes, records, strict=True):
            if record:
                live[process] = {k.decode(): int(v) for k, v in record.items()}
            else:
                expired.append(process)
        return live, expired

    def read_presence(self) -> dict[str, dict[str, int]]:
        client = self.sync_client
        members: Iterable[bytes] = client.smembers(self.presence_key())  # type: ignore[assignment]
        processes = sorted(member.decode() for member in members)
        if not processes:
            return {}
        pipe = client.pipeline(transaction=False)
        for process in processes:
            pipe.hgetall(self.presence_record_key(process))
        live, expired = self._decode_presence(processes, pipe.execute())
        if expired:
            # A process whose record expired died without a goodbye. Should it be
            # alive after all (stalled past the ttl), its next refresh adds it back.
            client.srem(self.presence_key(), *expired)
        return live

    async def aread_presence(self) -> dict[str, dict[str, int]]:
        client = self.async_client()
        members: Iterable[bytes] = await client.smembers(self.presence_key())  # type: ignore[assignment]
        processes = sorted(member.decode() for member in members)
        if not processes:
            return {}
        pipe = client.pipeline(transaction=False)
        for process in processes:
            pipe.hgetall(self.presence_record_key(process))
        live, expired = self._decode_presence(processes, await pipe.execute())
        if expired:
            await client.srem(self.presence_key(), *expired)
        return live

    def connect(self, handler: MessageHandler) -> RedisSubscriber:
        return RedisSubscriber(self, handler)


class RedisSubscriber(Subscriber):
    """One pub/sub connection per server process, read by one task."""

    def __init__(self, backend: RedisBackend, handler: MessageHandler) -> None:
        self.backend = backend
        self.handler = handler
        self.client = backend.async_client()
        # The pub/sub connection blocks on reads by design: no socket_timeout,
        # a PING every HEALTH_CHECK_INTERVAL s finds a dead peer instead.
        pubsub_pool = aredis.ConnectionPool.from_url(
            backend.url,
            max_connections=2,
            socket_timeout=None,
            socket_connect_timeout=COMMAND_TIMEOUT,
            health_check_interval=HEALTH_CHECK_INTERVAL,
        )
        self._pubsub_client = aredis.Redis(connection_pool=pubsub_pool)
        self.pubsub = self._pubsub_client.pubsub()
        self._pending: dict[str, asyncio.Future[None]] = {}
        # Every channel this process needs, whether Redis has confirmed it or not.
        self.wanted: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        #: False until the reader first connected, and during an outage: then
        #: subscriptions are only noted in ``wanted`` and sent on (re)connect.
        self._reachable = False
        self._outage_logged = False
        self._closed = False
        self._connected = asyncio.Event()  # set once the reader has connected

    async def start(self) -> None:
        """Start the reader, which connects in the background, and wait for its first
        connection at most :data:`CONFIRM_TIMEOUT`: a Redis that is down or stalled when
        the server starts delays the first authorizations by that much, no more."""
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CONFIRM_TIMEOUT)

    def _unreachable(self, exc: BaseException) -> None:
        """Log an outage once, when it starts, however many calls fail during it."""
        self._reachable = False
        if not self._outage_logged:
            self._outage_logged = True
            logger.warning(
                "broker_ws: Redis unreachable (%s): account frames keep flowing through the "
                "outbox, quotes resume when it is back",
                exc,
            )

    def _reachable_again(self) -> None:
        self._reachable = True
        self._connected.set()
        if self._outage_logged:
            self._outage_logged = False
            logger.warning("broker_ws: Redis reachable again")

    async def close(self) -> None:
        self._closed = True
        reader = self._reader
        # Cancel until it is done: on Python 3.11, asyncio.wait_for inside the reader
        # can swallow a cancellation that arrives as the awaited call completes.
        while reader is not None and not reader.done():
            reader.cancel()
            await asyncio.wait([reader], timeout=1.0)
        await self.pubsub.aclose()
        await self._pubsub_client.aclose()

    async def _read_forever(self) -> None:
        backoff = 0.1
        while not self._reachable and not self._closed:  # the first connection
            await self._reconnect()
            if not self._reachable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        while not self._closed:
            try:
                message = await self.pubsub.get_message(timeout=READ_POLL)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._unreachable(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                await self._reconnect()
                continue
            backoff = 0.1
            if not self._reachable:
                await self._reconnect()  # the read worked: send what waited
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"].decode()
            if kind == "message":
                self.handler(channel, message["data"].decode())
            elif kind == "subscribe":
                future = self._pending.pop(channel, None)
                if future is not None and not future.done():
                    future.set_result(None)

    async def _reconnect(self) -> None:
        try:
            # redis-py re-subscribes the channels it had in its on_connect callback.
            await asyncio.wait_for(self.pubsub.connect(), COMMAND_TIMEOUT)
            # Channels wanted while Redis was down never reached redis-py.
            missed = self.wanted - set(self.pubsub.channels)
            if missed:
                await self.pubsub.subscribe(*missed)
        except Exception as exc:
            self._unreachable(exc)
            return
        self._reachable_again()
        if self.on_reconnect is not None:
            self.on_reconnect()

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe and wait for Redis to confirm, so that what is read next
        (last quotes, the current seq) cannot miss a message published later.

        With Redis unreachable this does not fail: the channels are kept as
        wanted and subscribed on reconnect. Sessions keep working meanwhile;
        account frames still reach them from the outbox, quotes when Redis is back.
        """
        names = [channel for channel in channels if channel not in self.wanted]
        self.wanted.update(names)
        if not names:
            return
        loop = asyncio.get_running_loop()
        futures = [self._pending.setdefault(name, loop.create_future()) for name in names]
        try:
            if self._reachable:
                await asyncio.wait_for(self.pubsub.subscribe(*names), CONFIRM_TIMEOUT)
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*futures)), CONFIRM_TIMEOUT)
            # else: the reader subscribes every wanted channel when Redis is back
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
        except TimeoutError:
            logger.info("broker_ws: Redis did not confirm %d subscription(s) in time", len(names))
        finally:
            for name in names:
                self._pending.pop(name, None)

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        names = [channel for channel in channels if channel in self.wanted]
        self.wanted.difference_update(names)
        if names:
            try:
                await self.pubsub.unsubscribe(*names)
            except (RedisError, OSError, TimeoutError) as exc:
                # Dropped with the connection anyway; not re-subscribed (not wanted).
                self._unreachable(exc)

    async def last_quotes(self, symbols: Sequence[str]) -> dict[str, str]:
        if not symbols:
            return {}
        if not self._reachable:
            return {}  # no snapshot while Redis is down; live quotes follow when it is back
        try:
            values = await asyncio.wait_for(
                self.client.hmget(self.backend.last_key(), list(symbols)), CONFIRM_TIMEOUT
            )
        except (RedisError, OSError) as exc:
            logger.info("broker_ws: last quotes unavailable (%s)", exc)
            return {}
        except TimeoutError:
            logger.info("broker_ws: Redis did not answer for the last quotes in time")
            return {}
        return {
            s: v.decode() if isinstance(v, bytes) else v
            for s, v in zip(symbols, values, strict=True)
            if v is not None
        }

    async def last_statuses(self, symbols: Sequence[str]) -> dict[str, str]:
        if not symbols or not self._reachable:
            return {}  # as for last quotes: no snapshot while Redis is down
        try:
            values = await asyncio.wait_for(
                self.client.hmget(self.backend.status_key(), list(symbols)), CONFIRM_TIMEOUT
            )
        except (RedisError, OSError, TimeoutError) as exc:
            logger.info("broker_ws: last statuses unavailable (%r)", exc)
            return {}
        return {
            s: v.decode() if isinstance(v, bytes) else v
            for s, v in zip(symbols, values, strict=True)
            if v is not None
        }
