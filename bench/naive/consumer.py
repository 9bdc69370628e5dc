"""Baseline ``naive``: the Channels consumer a Django developer writes first.

One channel-layer channel per session; subscribing is ``group_add`` per
symbol; the publisher calls ``group_send`` per quote and every session's
handler encodes and sends its own copy of the frame. The channel layer is
the demo's own ``CHANNEL_LAYERS`` (``channels_redis`` ``RedisChannelLayer``
when ``REDIS_URL`` is set; see project/settings.py for its capacity and
timeouts).

Authorization is trivial and NOT checked: ``{"authorization": "<login>"}``
joins that login's group (for the account frames of scenario c) and is
answered with seq 0. No token, no database.
"""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer


def quote_channel(symbol: str) -> str:
    return f"quote_{symbol}"


def login_channel(login: str) -> str:
    return f"login_{login}"


class NaiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.joined: list[str] = []
        await self.accept()

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kw: Any
    ) -> None:
        if text_data == "ping":
            await self.send(text_data="pong")
            return
        await super().receive(text_data=text_data, bytes_data=bytes_data, **kw)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and "authorization" in content:
            login = str(content["authorization"])
            await self.channel_layer.group_add(login_channel(login), self.channel_name)
            self.joined.append(login_channel(login))
            await self.send_json(
                {"event": "authorized", "data": {"logins": [login], "seq": {login: 0}}}
            )
        elif isinstance(content, dict) and content.get("event") == "subscribe":
            symbols = [s for s in content.get("data") or [] if isinstance(s, str)]
            for symbol in symbols:
                await self.channel_layer.group_add(quote_channel(symbol), self.channel_name)
                self.joined.append(quote_channel(symbol))
            await self.send_json({"event": "subscribed", "data": symbols})
        else:
            await self.send_json({"event": "error", "data": {"code": "unknown_event"}})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    # group_send handlers: each session encodes its own frame
    async def quote_message(self, event: dict[str, Any]) -> None:
        await self.send_json(["t", event["symbol"], event["bid"], event["ask"], event["ts"]])

    async def balance_message(self, event: dict[str, Any]) -> None:
        await self.send_json(event["frame"])
