"""Django-side set-up for the broker_ws servers of the benchmark.

Run with the same environment as the server (DATABASE_URL, REDIS_URL)::

    python bench/bw_setup.py template --users 500   # migrate, demo_data, bench users
    python bench/bw_setup.py tokens --users 500 --out tokens.json

``template`` migrates a fresh SQLite file, seeds the demo data
(``demo_data --quiet``) and creates ``--users`` users ``bench0000``... each
with one account (login ``LOGIN_BASE + i``) and its Balance row. They are
bulk-created: no password hashing, no signals, so every login starts at
seq 0. ``tokens`` migrates (a no-op unless a migration was added since the
template was made), then mints one simplejwt access token per bench user
(``AccessToken.for_user``; 15 min in the demo settings) and writes
``[{"token": ..., "login": ...}, ...]`` in user order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

LOGIN_BASE = 700000


def username(i: int) -> str:
    return f"bench{i:04d}"


def template(users: int) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.core.management import call_command
    from django.db import transaction

    from project.broker.models import Account, Balance

    call_command("migrate", interactive=False, verbosity=0)
    call_command("demo_data", quiet=True)
    User = get_user_model()
    with transaction.atomic():
        User.objects.bulk_create(
            [User(username=username(i), password=make_password(None)) for i in range(users)]
        )
        by_name = {u.username: u for u in User.objects.filter(username__startswith="bench")}
        Account.objects.bulk_create(
            [
                Account(user=by_name[username(i)], login=str(LOGIN_BASE + i), name=f"bench {i}")
                for i in range(users)
            ]
        )
        accounts = Account.objects.filter(login__in=[str(LOGIN_BASE + i) for i in range(users)])
        amount = Decimal("10000.00")
        Balance.objects.bulk_create(
            [
                Balance(account=a, balance=amount, equity=amount, free_margin=amount)
                for a in accounts
            ]
        )
    from django.db import connection

    with connection.cursor() as cursor:  # fold the WAL into the file before it is copied
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def tokens(users: int, out: str) -> None:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework_simplejwt.tokens import AccessToken

    # The copy of the template is migrated again: a migration added since
    # the template was made (the code under test may be changing) applies.
    call_command("migrate", interactive=False, verbosity=0)

    User = get_user_model()
    by_name = {
        u.username: u for u in User.objects.filter(username__in=[username(i) for i in range(users)])
    }
    rows = [
        {"token": str(AccessToken.for_user(by_name[username(i)])), "login": str(LOGIN_BASE + i)}
        for i in range(users)
    ]
    with open(out, "w") as fh:
        json.dump(rows, fh)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["template", "tokens"])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--out")
    args = parser.parse_args()
    import django

    django.setup()
    if args.command == "template":
        template(args.users)
    else:
        tokens(args.users, args.out)


if __name__ == "__main__":
    main()
