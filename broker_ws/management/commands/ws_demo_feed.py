"""``manage.py ws_demo_feed``: a random-walk quote feed."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from broker_ws.publish.feed import DEFAULT_SYMBOLS, run_feed


class Command(BaseCommand):
    help = "Publish random-walk quotes (to the server processes sharing BROKER_WS['REDIS_URL'])."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated symbols"
        )
        parser.add_argument("--rate", type=float, default=10.0, help="quotes per second in total")
        parser.add_argument(
            "--duration", type=float, default=None, help="seconds (default: forever)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        symbols = [s for s in options["symbols"].split(",") if s]
        self.stdout.write(f"feeding {', '.join(symbols)} at {options['rate']}/s (Ctrl-C stops)")
        try:
            sent = run_feed(symbols, options["rate"], options["duration"])
        except KeyboardInterrupt:
            return
        self.stdout.write(f"published {sent} quotes")
