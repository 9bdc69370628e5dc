"""Baseline ``plain``: a plain ``websockets`` server with ONE Redis pub/sub subscription.

What the fan-out costs without Django, Channels or an ASGI server: the
publisher encodes each frame once and PUBLISHes it on ``bench.q.<symbol>``
(quotes) or ``bench.l.<login>`` (account frames); this process holds one
pub/sub connection, subscribes to a channel while a local connection needs
it, and hands the received text to ``websockets.broadcast`` (which writes it
to every subscribed connection without awaiting any of them).
permessage-deflate is off (``compression=None``).

The protocol is the subset of protocol v1 the benchmark uses, with a
trivial authorization: ``{"authorization": "<login>"}`` is trusted as is (no
token, no database); the reply lists that login with seq 0.

    python bench/plain_server.py --port 8765 [--redis redis://127.0.0.1:6379/5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal

import redis.asyncio as aredis
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

PREFIX = "bench"
logger = logging.getLogger("plain_server")


class Fanout:
    def __init__(self, url: str) -> None:
        # The pub/sub connection blocks on reads by design: no socket timeout
        # (redis-py 8 would otherwise time it out after 5 s of silence).
        self.redis = aredis.Redis.from_url(url, socket_timeout=None)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.channels: dict[str, set[ServerConnection]] = {}

    async def start(self) -> None:
        await self.pubsub.subscribe(f"{PREFIX}.all")
        asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        channels = self.channels
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            conns = channels.get(message["channel"].decode())
            if conns:
                broadcast(conns, message["data"].decode())

    async def join(self, channel: str, conn: ServerConnection) -> None:
        conns = self.channels.get(channel)
        if conns is None:
            conns = self.channels[channel] = set()
            await self.pubsub.subscribe(channel)
        conns.add(conn)

    def leave(self, channels: list[str], conn: ServerConnection) -> None:
        for channel in channels:
            conns = self.channels.get(channel)
            if conns is not None:
                conns.discard(conn)


def control(event: str, data: object) -> str:
    return json.dumps({"event": event, "data": data}, separators=(",", ":"))


async def handler(conn: ServerConnection, fanout: Fanout) -> None:
    joined: list[str] = []
    authorized = False
    try:
        async for text in conn:
            if not isinstance(text, str):
                await conn.send(control("error", {"code": "binary_not_supported"}))
                continue
            if text == "ping":
                await conn.send("pong")
                continue
            try:
                message = json.loads(text)
            except ValueError:
                await conn.send(control("error", {"code": "bad_json"}))
                continue
            if isinstance(message, dict) and "authorization" in message:
                login = str(message["authorization"])
                channel = f"{PREFIX}.l.{login}"
                await fanout.join(channel, conn)
                joined.append(channel)
                authorized = True
                await conn.send(control("authorized", {"logins": [login], "seq": {login: 0}}))
            elif not authorized:
                await conn.send(control("error", {"code": "not_authorized"}))
            elif isinstance(message, dict) and message.get("event") == "subscribe":
                symbols = [s for s in message.get("data") or [] if isinstance(s, str)]
                for symbol in symbols:
                    channel = f"{PREFIX}.q.{symbol}"
                    await fanout.join(channel, conn)
                    joined.append(channel)
                await conn.send(control("subscribed", symbols))
            else:
                await conn.send(control("error", {"code": "unknown_event"}))
    except ConnectionClosed:
        pass
    finally:
        fanout.leave(joined, conn)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5")
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args()
    fanout = Fanout(args.redis)
    await fanout.start()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    async with serve(
        lambda conn: handler(conn, fanout),
        args.host,
        args.port,
        compression=None,
        backlog=args.backlog,
    ):
        with contextlib.suppress(asyncio.CancelledError):
            await stop


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
