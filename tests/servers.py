"""Real processes for end-to-end tests: the demo under daphne, and manage.py commands.

Each :class:`Deployment` is one database and one bus configuration shared by
every process started from it, exactly as an operator would run them:

* ``embedded``: a SQLite file and no Redis (the README's demo);
* ``redis``: PostgreSQL (a database created for the test) and Redis.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    """Return once something accepts connections on ``port``; fail if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Deployment:
    """Environment shared by every process of one test deployment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.servers: list[subprocess.Popen[bytes]] = []

    def manage(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``manage.py *args`` in a process of its own; return its stdout."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def shell(self, code: str) -> str:
        """Run Python code in ``manage.py shell``, in a process of its own."""
        return self.manage("shell", "-c", code)

    def start_server(self, *extra: str, wrapper: Sequence[str] = ()) -> str:
        """Start ``manage.py rundemo`` (daphne) on a free port; return its base URL.
        ``wrapper``: a script and its arguments that run ``manage.py ...`` themselves."""
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, *wrapper, "manage.py", "rundemo", "--port", str(port), *extra],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.servers.append(proc)
        wait_for_port(port, proc)
        return f"127.0.0.1:{port}"

    def stop(self) -> list[str]:
        """Stop every server; return what each wrote to stderr."""
        logs = []
        for proc in self.servers:
            if proc.returncode is not None:
                continue  # stopped before
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            logs.append(err.decode(errors="replace"))
        return logs


def _base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="project.settings", PYTHONUNBUFFERED="1", **extra)
    return env


@contextmanager
def deployment(kind: str, tmp_path: Path) -> Iterator[Deployment]:
    """A migrated deployment with the demo data, torn down afterwards."""
    if kind == "embedded":
        env = _base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
        yield from _run(Deployment(env))
        return
    import psycopg

    name = f"bws_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    # Every redis deployment uses the demo's key prefix: what one leaves in Redis (last
    # quotes, statuses, states) must not become the next one's snapshot.
    _delete_demo_keys()
    try:
        env = _base_env(DATABASE_URL=f"{POSTGRES_URL}/{name}", REDIS_URL=REDIS_URL)
        yield from _run(Deployment(env))
    finally:
        _delete_demo_keys()
        with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: The demo's KEY_PREFIX (BROKER_WS default), which redis deployments share.
DEMO_KEY_PREFIX = "bws:"


def _delete_demo_keys() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{DEMO_KEY_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _run(dep: Deployment) -> Iterator[Deployment]:
    dep.manage("migrate", "--verbosity", "0")
    dep.manage("demo_data", "--quiet")
    try:
        yield dep
    finally:
        logs = dep.stop()
        for log in logs:
            assert "Traceback" not in log, log


def obtain_token(host: str, username: str, password: str) -> dict[str, Any]:
    """POST /api/token/ as a client would."""
    request = urllib.request.Request(
        f"http://{host}/api/token/",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]
