"""``manage.py ws_revoke USERNAME``: close a user's sessions everywhere and refuse its tokens."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker_ws.publish.revocation import revoke_user


class Command(BaseCommand):
    help = (
        "Revoke a user's access: every session of the user, on every server process, is "
        "closed with 4004 and tokens issued until now are refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        model = get_user_model()
        try:
            user = model._default_manager.get_by_natural_key(options["username"])
        except model.DoesNotExist as exc:
            raise CommandError(f"no user {options['username']!r}") from exc
        revoke_user(user)
        self.stdout.write(f"revoked {options['username']} (user id {user.pk})")
