"""Several processes saving bound rows at once into one SQLite file.

``python -m tests.sqlite_writers MODE [--processes 3] [--seconds 2]`` prints one
JSON line: saves, "database is locked" errors and the longest save, in all and per
process. Each process saves its own login's ``Balance`` in ``transaction.atomic()``,
as the admin does, so every save also numbers and writes its account frame.

``default`` is Django's SQLite configuration (no ``OPTIONS``), ``fixed`` the one
docs/guide.md §15.1 recommends; the other modes change one thing at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    # One change at a time, to see which of the fixed ones matters.
    "timeout": {"timeout": 20},
    "wal": {"init_command": "PRAGMA journal_mode=WAL;"},
    "wal-timeout": {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"},
    "immediate": {"transaction_mode": "IMMEDIATE"},
    "immediate-timeout": {"transaction_mode": "IMMEDIATE", "timeout": 20},
    "fixed": {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    },
}


def _setup(path: str, options: dict[str, Any]) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    os.environ.pop("REDIS_URL", None)
    import project.settings as demo

    # Replace the demo's OPTIONS before Django reads the module.
    demo.DATABASES["default"]["OPTIONS"] = options
    import django

    django.setup()


def _seed(processes: int) -> None:
    from django.contrib.auth import get_user_model

    from project.broker.models import Account, Balance

    for n in range(processes):
        user = get_user_model().objects.create_user(f"writer{n}")
        account = Account.objects.create(user=user, login=f"90{n:02d}")
        Balance.objects.create(account=account, balance=100)


def _write(index: int, start: float, seconds: float) -> dict[str, int]:
    from django.db import OperationalError, transaction

    from project.broker.models import Balance

    login = f"90{index:02d}"
    saves = locked = 0
    longest = 0.0
    time.sleep(max(0.0, start - time.time()))
    deadline = start + seconds
    while time.time() < deadline:
        began = time.monotonic()
        try:
            with transaction.atomic():
                balance = Balance.objects.select_related("account").get(account__login=login)
                balance.balance += 1
                balance.save()
            saves += 1
            longest = max(longest, time.monotonic() - began)
        except OperationalError as exc:
            if "database is locked" not in str(exc):
                raise
            locked += 1
    return {"saves": saves, "locked": locked, "longest_save_ms": round(longest * 1000)}


def _child(mode: str, db: str, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.sqlite_writers", mode, "--db", db, *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def run(mode: str, processes: int = 3, seconds: float = 2.0) -> dict[str, Any]:
    """Migrate a fresh SQLite file, then let ``processes`` writers save at once."""
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "db.sqlite3")
        seed = _child(mode, db, "--seed", "--processes", str(processes))
        assert seed.wait(timeout=120) == 0
        start = time.time() + 1.5  # every writer has set Django up by then
        writers = [
            _child(mode, db, "--worker", str(n), "--start", str(start), "--seconds", str(seconds))
            for n in range(processes)
        ]
        results = []
        for writer in writers:
            out, _ = writer.communicate(timeout=seconds + 60)
            assert writer.returncode == 0
            results.append(json.loads(out))
    return {
        "mode": mode,
        "processes": processes,
        "seconds": seconds,
        "saves": sum(r["saves"] for r in results),
        "locked": sum(r["locked"] for r in results),
        "longest_save_ms": max(r["longest_save_ms"] for r in results),
        "per_process": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(OPTIONS))
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--db")
    parser.add_argument("--seed", action="store_true")
    parser.add_argument("--worker", type=int)
    parser.add_argument("--start", type=float, default=0.0)
    args = parser.parse_args()
    if args.db is None:
        print(json.dumps(run(args.mode, args.processes, args.seconds)))
        return
    _setup(args.db, OPTIONS[args.mode])
    if args.seed:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        _seed(args.processes)
    else:
        print(json.dumps(_write(args.worker, args.start, args.seconds)))


if __name__ == "__main__":
    main()
