"""``manage.py ws_new_epoch``: give logins a new epoch, after a database restore.

A restored database numbers account frames again from an earlier seq, so a
seq a client already holds may now name another frame, and its ``resume``
would look up to date. A new epoch per login makes every client that
resumes with an epoch from before the restore get ``resync`` instead (see
docs/protocol.md, "Epochs"). Run it after restoring, before the stream
servers start again (a running server keeps the epoch and seq it read for a
login while that login has sessions on it).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broker_ws.outbox import store


class Command(BaseCommand):
    help = "Give logins a new epoch (after a database restore): clients holding old seqs resync."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("logins", nargs="*", help="the logins to renew")
        parser.add_argument("--all", action="store_true", help="renew every login")

    def handle(self, *args: Any, **options: Any) -> None:
        logins: list[str] = options["logins"]
        if options["all"] == bool(logins):
            raise CommandError("name the logins to renew, or pass --all (not both)")
        renewed = store.renew_epochs(None if options["all"] else logins)
        self.stdout.write(f"{renewed} login(s) have a new epoch")
