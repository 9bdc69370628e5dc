"""The demo's ``asgi.py``, as daphne and uvicorn import it when started on their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_asgi_module_freezes_the_start_up_heap(tmp_path: Path) -> None:
    """Full garbage collections stop every session of the process; what was loaded at
    start-up (Django, the apps) is frozen out of them, as docs/deployment.md advises."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    env.pop("REDIS_URL", None)
    script = "import gc, project.asgi; print(gc.get_freeze_count(), len(gc.get_objects()))"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    frozen, collected = (int(n) for n in done.stdout.split())
    assert frozen > 50_000, done.stdout  # Django and the apps: ~90 000 objects
    assert collected < frozen // 10, done.stdout  # a collection walks only what came later
