"""A test kit for hosts of broker_ws: a protocol v1 client and an isolated bus.

A host tests its own bindings the way a trading client sees them::

    from broker_ws.testing import StreamClient, isolated_bus

    @pytest.mark.django_db(transaction=True)
    async def test_a_deposit_reaches_the_account_stream(token):
        async with isolated_bus(), StreamClient() as client:
            await client.authorize(token)
            await database_sync_to_async(deposit)(login="1001", amount=100)
            frame = await client.wait_for(lambda f: f[0] == "b" and f[1] == "1001")
            assert frame[4] == 1100  # ["b", login, seq, currency, balance, ...]

:class:`StreamClient` speaks to the ASGI application in the test's own
process (Channels' ``WebsocketCommunicator``; no server, no port), or to a
running server when given a ``ws://`` URL. Every wait has a timeout: a
frame that never comes fails the test in seconds, it never hangs it.

Account frames reach a session only once the save's transaction commits
(the outbox), so tests that save models need
``django_db(transaction=True)`` (pytest-django) or ``TransactionTestCase``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any

import orjson

__all__ = ["TIMEOUT", "StreamClient", "isolated_bus"]

#: Seconds any single wait of :class:`StreamClient` lasts at most, unless told.
TIMEOUT = 5.0

Frame = Any  # a decoded frame: a list (data frames) or a dict (control replies)


class StreamClient:
    """One protocol v1 session, for tests.

    Args:
        url: ``ws://host:port/path`` of a running server; when omitted, the
            session runs in this process through ``app``.
        app: the ASGI application (default: broker_ws's consumer, as routed
            by :func:`broker_ws.routing.websocket_application`).
        path: the path of the in-process connection.
        headers: request headers of the in-process connection, for example
            ``[(b"origin", b"https://app.example")]``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        app: Any = None,
        path: str = "/",
        headers: Iterable[tuple[bytes, bytes]] | None = None,
        subprotocols: Iterable[str] | None = None,
    ) -> None:
        self.url = url
        self._subprotocols = list(subprotocols) if subprotocols is not None else None
        #: The subprotocol the server chose (None: none), once connected.
        self.subprotocol: str | None = None
        #: The in-process communicator (None for a URL): for tests that need ASGI
        #: messages themselves (``ws.send_input``, ``ws.receive_output``).
        self.ws: Any = None
        self._socket: Any = None
        if url is None:
            from channels.testing import WebsocketCommunicator

            from broker_ws.session.consumer import StreamConsumer

            application = app if app is not None else StreamConsumer.as_asgi()
            self.ws = WebsocketCommunicator(
                application, path, headers=list(headers or []), subprotocols=self._subprotocols
            )

    # --- connection -----------------------------------------------------------
    async def connect(self, timeout: float = TIMEOUT) -> None:
        """Open the WebSocket; fails if the server refuses it."""
        if self.ws is not None:
            connected, chosen = await self.ws.connect(timeout=timeout)
            assert connected, "the server refused the WebSocket"
            self.subprotocol = chosen if isinstance(chosen, str) else None
            return
        import websockets
        from websockets.typing import Subprotocol

        assert self.url is not None
        self._socket = await asyncio.wait_for(
            websockets.connect(
                self.url,
                max_size=None,
                subprotocols=[Subprotocol(p) for p in self._subprotocols]
                if self._subprotocols is not None
                else None,
            ),
            timeout,
        )
        self.subprotocol = self._socket.subprotocol

    async def close(self) -> None:
        """Close the WebSocket from the client's side (nothing if already closed)."""
        with contextlib.suppress(Exception):
            if self.ws is not None:
                await self.ws.disconnect()
            elif self._socket is not None:
                await self._socket.close()

    async def __aenter__(self) -> StreamClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- sending ----------------------------------------------------------------
    async def send(self, message: Any) -> None:
        """Send a message: a dict or list (as JSON), a str, or bytes (a binary frame)."""
        if self.ws is not None:
            if isinstance(message, bytes):
                await self.ws.send_to(bytes_data=message)
            elif isinstance(message, str):
                await self.ws.send_to(text_data=message)
            else:
                await self.ws.send_to(text_data=orjson.dumps(message).decode())
            return
        if not isinstance(message, str | bytes):
            message = orjson.dumps(message).decode()
        await self._socket.send(message)

    # --- receiving --------------------------------------------------------------
    async def _next(self, timeout: float) -> tuple[str | None, int | None]:
        """The next text frame, or ``(None, close code)`` once the server closed."""
        if self.ws is not None:
            # Our own timeout, not the communicator's: on its timeout, asgiref
            # cancels the application, and the session could not be used again.
            async with asyncio.timeout(timeout):
                message = await self.ws.receive_output(timeout + 60)
            if message["type"] == "websocket.close":
                return None, message.get("code", 1000)
            assert message["type"] == "websocket.send", message
            return message.get("text"), None
        import websockets

        try:
            text = await asyncio.wait_for(self._socket.recv(), timeout)
        except websockets.ConnectionClosed as closed:
            return None, closed.rcvd.code if closed.rcvd is not None else 1006
        return text if isinstance(text, str) else text.decode(), None

    async def recv_text(self, timeout: float = TIMEOUT) -> str:
        """The next frame as sent (for example ``"pong"``); fails on a close."""
        text, code = await self._next(timeout)
        assert text is not None, f"the server closed the session with {code}"
        return text

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        """The next frame, decoded from JSON."""
        return orjson.loads(await self.recv_text(timeout))

    async def recv_close(self, timeout: float = TIMEOUT) -> int:
        """Skip frames until the server closes; return the close code."""
        async with asyncio.timeout(timeout):
            while True:
                text, code = await self._next(timeout)
                if text is None:
                    assert code is not None
                    return code

    async def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = TIMEOUT) -> Frame:
        """Skip frames until one matches ``predicate``; return it.

        Raises:
            TimeoutError: none matched within ``timeout`` seconds.
            AssertionError: the server closed the session first.
        """
        async with asyncio.timeout(timeout):
            while True:
                text, code = await self._next(timeout)
                assert text is not None, f"the server closed the session with {code}"
                frame = orjson.loads(text) if text[:1] in ("[", "{") else text
                if predicate(frame):
                    return frame

    async def assert_nothing(
        self, within: float = 0.5, matching: Callable[[Frame], bool] | None = None
    ) -> None:
        """Fail if a frame (matching ``matching``, when given) arrives within ``within``
        seconds. Frames that do not match are skipped. This is the one wait of the
        kit that always lasts its whole time: keep ``within`` short."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (left := deadline - loop.time()) > 0:
            try:
                text, code = await self._next(left)
            except TimeoutError:
                return
            if text is None:
                raise AssertionError(f"the server closed the session with {code}")
            frame = orjson.loads(text) if text[:1] in ("[", "{") else text
            if matching is None or matching(frame):
                raise AssertionError(f"expected nothing, received {frame!r}")

    # --- protocol v1 ----------------------------------------------------------------
    async def authorize(
        self,
        token: str,
        resume: dict[str, int] | None = None,
        timeout: float = TIMEOUT,
        epochs: dict[str, str] | None = None,
    ) -> Any:
        """Send the token (with ``resume`` and ``epochs``, if given); return
        ``authorized.data``."""
        message: dict[str, Any] = {"authorization": token}
        if resume is not None:
            message["resume"] = resume
        if epochs is not None:
            message["epochs"] = epochs
        await self.send(message)
        reply = await self.recv(timeout)
        assert isinstance(reply, dict) and reply.get("event") == "authorized", reply
        return reply["data"]

    async def subscribe(self, *symbols: str, timeout: float = TIMEOUT) -> Any:
        """Subscribe; return ``subscribed.data`` (the snapshot quotes follow it)."""
        await self.send({"event": "subscribe", "data": list(symbols)})
        reply = await self.recv(timeout)
        assert isinstance(reply, dict) and reply.get("event") == "subscribed", reply
        return reply["data"]

    async def unsubscribe(self, *symbols: str, timeout: float = TIMEOUT) -> Any:
        """Unsubscribe; return ``unsubscribed.data``."""
        await self.send({"event": "unsubscribe", "data": list(symbols)})
        reply = await self.wait_for(
            lambda f: isinstance(f, dict) and f.get("event") == "unsubscribed", timeout
        )
        return reply["data"]


@contextlib.asynccontextmanager
async def isolated_bus(**settings_overrides: Any) -> AsyncIterator[str]:
    """Give the test a bus of its own: a fresh ``KEY_PREFIX`` (so channels, last
    quotes and Redis keys of other tests are never seen), ``BROKER_WS`` overrides
    applied, and the process's hubs closed on exit (with their bus connections
    and outbox poll). Yields the prefix. Works with the in-process bus and Redis;
    on Redis the prefix's keys are deleted on exit."""
    from django.conf import settings
    from django.test import override_settings

    from broker_ws.session.hub import close_hubs

    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = {**getattr(settings, "BROKER_WS", {}), "KEY_PREFIX": prefix, **settings_overrides}
    await close_hubs()  # a hub started under other settings must not serve this test
    try:
        with override_settings(BROKER_WS=config):
            try:
                yield prefix
            finally:
                await close_hubs()
    finally:
        url = config.get("REDIS_URL")
        if url:
            await asyncio.to_thread(_delete_keys, url, prefix)


def _delete_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
