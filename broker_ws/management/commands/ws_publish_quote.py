"""``manage.py ws_publish_quote SYMBOL BID ASK``: publish one quote."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker_ws.publish.alerts import get_engine
from broker_ws.publish.api import publish_quote


class Command(BaseCommand):
    help = "Publish one quote to every session subscribed to SYMBOL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("symbol")
        parser.add_argument("bid", type=float)
        parser.add_argument("ask", type=float)
        parser.add_argument("--ts", type=int, default=None, help="epoch ms (default: now)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            publish_quote(options["symbol"], options["bid"], options["ask"], options["ts"])
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        engine = get_engine()
        if engine is not None and not engine.wait_idle():
            raise CommandError("price alerts fired by this quote were not all saved in time")
        self.stdout.write(f"published {options['symbol']} {options['bid']} / {options['ask']}")
