"""``manage.py rundemo``: daphne (or uvicorn) plus the demo quote feed in one process.

The embedded demo keeps everything in one process (in-process backend), so
the feed has to publish from inside the server process: it runs as a
thread beside the server. With each quote it also publishes the live state
``e`` (equity, margin, free margin, margin level, floating P/L) of the accounts
with an open trade of that symbol (:mod:`project.broker.equity`). With
``REDIS_URL`` set, ``--no-feed`` and a separate ``manage.py ws_demo_feed`` work
as well (quotes only).

Both servers get what DESIGN §4 measured they need: a listen backlog of
4096 (daphne's default of 50 makes 1000 simultaneous connects take 13 s),
no idle timeout and permessage-deflate off under uvicorn (it defeats encoding a
frame once for every session). ``gc.freeze()`` of everything loaded at
start-up is in ``project/asgi.py``, which both servers import before serving.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from broker_ws.publish.feed import DEFAULT_SYMBOLS, run_feed
from project.broker.equity import EquityBook, quote_and_equity


class Command(BaseCommand):
    help = "Serve the demo with daphne or uvicorn (backlog 4096) and run the quote feed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--rate", type=float, default=5.0, help="feed quotes per second")
        parser.add_argument(
            "--symbols",
            default=",".join(DEFAULT_SYMBOLS),
            help="comma-separated symbols the feed publishes",
        )
        parser.add_argument("--no-feed", action="store_true")
        parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["no_feed"]:
            feed = threading.Thread(
                target=run_feed,
                kwargs={
                    "symbols": [s for s in options["symbols"].split(",") if s],
                    "rate": options["rate"],
                    "publish": quote_and_equity(EquityBook()),
                },
                name="demo-feed",
                daemon=True,
            )
            feed.start()
        host, port = options["host"], options["port"]
        self.stdout.write(
            f"broker_ws demo on http://{host}:{port}/  (WebSocket ws://{host}:{port}/, "
            f"admin http://{host}:{port}/admin/, {options['server']}, Ctrl-C stops)"
        )
        self.stdout.flush()
        if options["server"] == "uvicorn":
            import uvicorn

            uvicorn.run(
                "project.asgi:application",
                host=host,
                port=port,
                backlog=4096,
                ws_max_size=1024 * 1024,  # daphne's limit: over it, close 1009 under both
                ws_per_message_deflate=False,
                lifespan="off",
                log_level="warning",
            )
            return
        from daphne.cli import CommandLineInterface

        CommandLineInterface().run(
            [
                "-e",
                f"tcp:port={port}:backlog=4096:interface={host}",
                "--websocket_timeout",
                "-1",
                "project.asgi:application",
            ]
        )
