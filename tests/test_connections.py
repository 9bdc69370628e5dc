"""Database connections of a server process stay few whatever its HTTP traffic.

Under ASGI each HTTP request runs its view in a thread of its own. With
persistent connections (``CONN_MAX_AGE > 0``) a connection opened there stayed
open after its thread was gone: one per request, until PostgreSQL refused new
clients ("too many clients already") and the token and snapshot views answered
500. The demo keeps no persistent connection, and on PostgreSQL uses psycopg's
pool (docs/deployment.md, "The database").
"""

from __future__ import annotations

import concurrent.futures
import os
import urllib.request
from pathlib import Path

import psycopg

from tests.servers import deployment, obtain_token
from tests.services import PrivatePostgres, private_deployment

REQUESTS = 100


def _snapshots(host: str, token: str) -> set[int]:
    """``REQUESTS`` snapshot requests, ten at a time; their status codes."""

    def get(_: int) -> int:
        request = urllib.request.Request(
            f"http://{host}/api/snapshot/?login=1001",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        return set(pool.map(get, range(REQUESTS)))


def test_http_requests_leave_no_sqlite_connection_open(tmp_path: Path) -> None:
    with deployment("embedded", tmp_path) as dep:
        host = dep.start_server("--no-feed")
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        assert _snapshots(host, token) == {200}
        pid = dep.servers[0].pid
        files = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        open_databases = [f for f in files if f.endswith("demo.sqlite3")]
        assert len(open_databases) <= 2, open_databases  # was 90


def test_http_requests_keep_postgresql_connections_few() -> None:
    with PrivatePostgres() as postgres, private_deployment(None, postgres) as dep:
        host = dep.start_server("--no-feed")
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        assert _snapshots(host, token) == {200}
        database = dep.env["DATABASE_URL"].rsplit("/", 1)[1]
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as admin:
            (count,) = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchone() or (0,)
        assert count <= 16, count  # the pool's max_size; was about one per request
