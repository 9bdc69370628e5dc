"""``manage.py ws_notify TEXT [--login L]``: send a notification."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from broker_ws.publish.api import notify


class Command(BaseCommand):
    help = "Send a notification to one login, or to every session without --login."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("text")
        parser.add_argument("--login", default=None)
        parser.add_argument("--level", default="info", help="info, warning, error, ...")

    def handle(self, *args: Any, **options: Any) -> None:
        seq = notify(options["text"], level=options["level"], login=options["login"])
        target = f"login {options['login']} (seq {seq})" if seq is not None else "everyone"
        self.stdout.write(f"notified {target}")
