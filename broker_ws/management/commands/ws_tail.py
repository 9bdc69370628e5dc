"""``manage.py ws_tail``: connect as a client would and print every frame.

It authenticates with ``--token``, or mints an access token for ``--user``
locally with simplejwt (an operator with shell access already holds the
signing key), subscribes to ``--symbols``, sends each ``--send`` message (a
host's command, for example) once authorized, and prints frames as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Tail the WebSocket stream as a client: authenticate, subscribe, print frames."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="ws://127.0.0.1:8000/")
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--token", help="a JWT access token")
        who.add_argument("--user", help="mint an access token for this username")
        parser.add_argument("--symbols", default="", help="comma-separated symbols to subscribe")
        parser.add_argument(
            "--send",
            action="append",
            default=[],
            metavar="JSON",
            help='a message to send once authorized (repeatable), e.g. \'{"event": "place_order", '
            '"id": 1, "data": {...}}\'',
        )
        parser.add_argument("--count", type=int, default=0, help="exit after N frames (0: never)")
        parser.add_argument(
            "--timeout", type=float, default=0, help="exit after S seconds (0: never)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        token = options["token"] or self._mint(options["user"])
        symbols = [s for s in options["symbols"].split(",") if s]
        messages = []
        for text in options["send"]:
            try:
                messages.append(json.loads(text))
            except ValueError as exc:
                raise CommandError(f"--send {text!r} is not JSON: {exc}") from exc
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                self._tail(
                    options["url"],
                    token,
                    symbols,
                    messages,
                    options["count"],
                    options["timeout"],
                )
            )

    def _mint(self, username: str) -> str:
        from rest_framework_simplejwt.tokens import AccessToken

        try:
            user = get_user_model()._default_manager.get_by_natural_key(username)
        except get_user_model().DoesNotExist as exc:
            raise CommandError(f"no user {username!r}") from exc
        return str(AccessToken.for_user(user))

    async def _tail(
        self,
        url: str,
        token: str,
        symbols: list[str],
        messages: list[Any],
        count: int,
        timeout: float,
    ) -> None:
        import websockets

        async with websockets.connect(url, open_timeout=10) as ws:
            await ws.send(json.dumps({"authorization": token}))
            if symbols:
                await ws.send(json.dumps({"event": "subscribe", "data": symbols}))
            for message in messages:  # read in order after the authorization
                await ws.send(json.dumps(message))
            seen = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            while not count or seen < count:
                wait = None if deadline is None else max(deadline - loop.time(), 0)
                try:
                    frame = await asyncio.wait_for(ws.recv(), wait)
                except TimeoutError:
                    return
                except websockets.ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                    self.stdout.write(f"closed by server: {code}")
                    return
                self.stdout.write(frame if isinstance(frame, str) else repr(frame))
                self.stdout.flush()
                seen += 1
