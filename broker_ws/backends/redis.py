"""Redis backend: one bus and one state for every process of a deployment.

* Quotes: ``HSET last`` and ``PUBLISH`` in one pipelined round trip. Each
  server process holds ONE pub/sub connection and subscribes to a symbol's
  channel only while a local session wants it, so a quote costs one Redis
  delivery per interested process, not per session.
* Account frames: a Lua script increments the login's counter, splices the
  number into the frame, appends it to the login's history and publishes
  it. Redis runs scripts atomically, so publish order is seq order across
  every publisher process.

Connection settings are explicit because redis-py's defaults bite here
(see docs/deployment in the README): commands get a 5 s ``socket_timeout``
so a dead Redis cannot hang a save; the pub/sub connection gets none,
because it blocks on reads by design, and relies on a periodic PING
(``health_check_interval``) to notice a dead peer. Pools block instead of
raising "Too many connections" when a connect storm briefly needs more.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio as aredis

from broker_ws.backends.base import AccountParts, Backend, MessageHandler, Subscriber

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 5.0
POOL_WAIT = 5.0
HEALTH_CHECK_INTERVAL = 10
READ_POLL = 5.0

_APPEND = """
local size = tonumber(ARGV[2])
local out = {}
local i = 3
while i < #ARGV do
  local seq = redis.call('INCR', KEYS[1])
  local frame = ARGV[i] .. seq .. ARGV[i + 1]
  redis.call('RPUSH', KEYS[2], frame)
  redis.call('PUBLISH', ARGV[1], seq .. ' ' .. frame)
  out[#out + 1] = seq
  i = i + 2
end
redis.call('LTRIM', KEYS[2], -size, -1)
return out
"""

# Returns {current, 1, frames...} or {current, 0} when history is too short.
_HISTORY = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = tonumber(ARGV[1])
if after >= cur then return {cur, 1} end
local len = redis.call('LLEN', KEYS[2])
if after + 1 < cur - len + 1 then return {cur, 0} end
local out = {cur, 1}
for _, frame in ipairs(redis.call('LRANGE', KEYS[2], len - (cur - after), -1)) do
  out[#out + 1] = frame
end
return out
"""


def _pool_kwargs(max_connections: int) -> dict[str, Any]:
    return {
        "max_connections": max_connections,
        "timeout": POOL_WAIT,
        "socket_timeout": COMMAND_TIMEOUT,
        "socket_connect_timeout": COMMAND_TIMEOUT,
    }


class RedisBackend(Backend):
    """Publisher half over a thread-safe sync pool; async pools per event loop."""

    def __init__(self, url: str, prefix: str, history_size: int, max_connections: int) -> None:
        self.url = url
        self.prefix = prefix
        self.history_size = history_size
        self.max_connections = max_connections
        self._sync: redis.Redis | None = None
        self._sync_lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    # --- keys ------------------------------------------------------------
    def last_key(self) -> str:
        return f"{self.prefix}:last"

    def seq_key(self, channel: str) -> str:
        return f"{channel}:seq"

    def history_key(self, channel: str) -> str:
        return f"{channel}:history"

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

    def _append_args(self, channel: str, parts: AccountParts) -> tuple[list[str], list[Any]]:
        args: list[Any] = [channel, self.history_size]
        for head, tail in parts:
            args.extend((head, tail))
        return [self.seq_key(channel), self.history_key(channel)], args

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

    def append_account(self, channel: str, parts: AccountParts) -> list[int]:
        keys, args = self._append_args(channel, parts)
        result = self.sync_client.eval(_APPEND, len(keys), *keys, *args)
        return [int(seq) for seq in result]  # type: ignore[union-attr]

    async def aappend_account(self, channel: str, parts: AccountParts) -> list[int]:
        keys, args = self._append_args(channel, parts)
        result = await self.async_client().eval(_APPEND, len(keys), *keys, *args)  # type: ignore[misc]
        return [int(seq) for seq in result]

    def publish(self, channel: str, frame: str) -> None:
        self.sync_client.publish(channel, frame)

    async def apublish(self, channel: str, frame: str) -> None:
        await self.async_client().publish(channel, frame)

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
        self._reader: asyncio.Task[None] | None = None
        self.on_reconnect: Any = None

    async def start(self) -> None:
        await self.pubsub.connect()
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.pubsub.aclose()
        await self._pubsub_client.aclose()

    async def _read_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                message = await self.pubsub.get_message(timeout=READ_POLL)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("broker_ws: Redis pub/sub read failed (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                await self._reconnect()
                continue
            backoff = 0.1
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
            # redis-py re-subscribes every channel in its on_connect callback.
            await self.pubsub.connect()
        except Exception as exc:
            logger.warning("broker_ws: Redis still unreachable (%s)", exc)
            return
        logger.info("broker_ws: Redis pub/sub reconnected")
        if self.on_reconnect is not None:
            self.on_reconnect()

    async def subscribe(self, channels: Iterable[str]) -> None:
        loop = asyncio.get_running_loop()
        futures = []
        names = []
        for channel in channels:
            future = self._pending.get(channel)
            if future is None:
                future = loop.create_future()
                self._pending[channel] = future
                names.append(channel)
            futures.append(future)
        if names:
            await self.pubsub.subscribe(*names)
        if futures:
            await asyncio.wait_for(asyncio.gather(*futures), COMMAND_TIMEOUT)

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        names = list(channels)
        if names:
            await self.pubsub.unsubscribe(*names)

    async def last_quotes(self, symbols: Sequence[str]) -> dict[str, str]:
        if not symbols:
            return {}
        values = await self.client.hmget(self.backend.last_key(), list(symbols))
        return {s: v.decode() for s, v in zip(symbols, values, strict=True) if v is not None}

    async def current_seq(self, channel: str) -> int:
        value = await self.client.get(self.backend.seq_key(channel))
        return int(value) if value is not None else 0

    async def history(self, channel: str, after: int) -> list[tuple[int, str]] | None:
        keys = [self.backend.seq_key(channel), self.backend.history_key(channel)]
        result = await self.client.eval(_HISTORY, 2, *keys, after)  # type: ignore[misc]
        if int(result[1]) == 0:
            return None
        return [(after + 1 + i, frame.decode()) for i, frame in enumerate(result[2:])]
