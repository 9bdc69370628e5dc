"""tests.services: private Redis and PostgreSQL really stop, restart and stall."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests import services
from tests.servers import obtain_token
from tests.services import PrivatePostgres, PrivateRedis, find_pg_bindir, private_deployment

SHARED_PORTS = (6379, 5432)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server


def redis_client(url: str, timeout: float = 2.0) -> redis.Redis:
    """No retries: a failure must show at once, not after redis-py's backoff."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None
    )


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_redis_stop_refuses_connections_and_start_comes_back_on_the_same_port(
    private_redis: PrivateRedis,
) -> None:
    port = private_redis.port
    assert port not in SHARED_PORTS
    assert private_redis.url == f"redis://127.0.0.1:{port}/0"
    client = redis_client(private_redis.url)
    client.set("k", "v")
    assert client.get("k") == b"v"

    private_redis.stop()
    assert not private_redis.running
    assert refused(port)
    with pytest.raises(redis.ConnectionError):
        client.ping()

    private_redis.start()
    assert private_redis.port == port
    assert client.ping()
    assert client.get("k") is None  # no persistence: a restart comes back empty
    client.close()


def test_redis_stall_hangs_commands_and_resume_answers_them(private_redis: PrivateRedis) -> None:
    client = redis_client(private_redis.url, timeout=1.0)
    assert client.ping()

    private_redis.stall()
    assert not refused(private_redis.port)  # still "up": the kernel accepts connections
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert 0.9 < time.monotonic() - started < 3

    private_redis.resume()
    assert client.ping()
    client.close()


def test_redis_stop_ends_a_stalled_server(private_redis: PrivateRedis) -> None:
    private_redis.stall()
    private_redis.stop()
    assert refused(private_redis.port)
    private_redis.start()
    assert redis_client(private_redis.url).ping()


def test_postgres_stop_kills_connections_and_start_keeps_the_data(
    private_postgres: PrivatePostgres,
) -> None:
    port = private_postgres.port
    assert port not in SHARED_PORTS
    name = private_postgres.create_database()
    url = private_postgres.url(name)
    assert url == f"postgres://postgres@127.0.0.1:{port}/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (42)")
        kept = conn  # kept open across the stop

        private_postgres.stop()
        assert not private_postgres.running
        with pytest.raises(psycopg.OperationalError):
            kept.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    assert refused(port)

    private_postgres.start()
    assert private_postgres.port == port
    with psycopg.connect(url, connect_timeout=2) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(42,)]


def test_postgres_stall_hangs_queries_and_resume_answers_them(
    private_postgres: PrivatePostgres,
) -> None:
    url = private_postgres.url()
    conn = psycopg.connect(url, autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)

    private_postgres.stall()
    assert private_postgres.stalled
    result: list[object] = []
    query = threading.Thread(
        target=lambda: result.append(conn.execute("SELECT 2").fetchone()), daemon=True
    )
    query.start()
    query.join(timeout=1.0)
    assert query.is_alive() and not result  # the backend is stopped: the query hangs
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):  # the postmaster is stopped too
        psycopg.connect(url, connect_timeout=1)
    assert time.monotonic() - started < 5

    private_postgres.resume()
    query.join(timeout=5)
    assert result == [(2,)]
    with psycopg.connect(url, connect_timeout=2) as fresh:
        assert fresh.execute("SELECT 3").fetchone() == (3,)
    conn.close()


def test_postgres_stop_ends_a_stalled_server(private_postgres: PrivatePostgres) -> None:
    private_postgres.stall()
    private_postgres.stop()
    assert not private_postgres.running and not private_postgres.stalled
    private_postgres.start()
    with psycopg.connect(private_postgres.url(), connect_timeout=2) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cleanup_after_a_failure_leaves_nothing_behind() -> None:
    with pytest.raises(ZeroDivisionError), PrivateRedis() as r, PrivatePostgres() as pg:
        root = pg.root
        pid = pg.postmaster_pid()
        assert root is not None and root.is_dir() and pid is not None
        pg.stall()  # even a stalled server is cleaned up
        r.stall()
        1 / 0  # noqa: B018
    assert root is not None and pid is not None
    assert not r.running and refused(r.port)
    assert not root.exists() and refused(pg.port)
    assert not services._alive(pid)
    assert not services._live


def test_missing_initdb_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(services, "PG_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="initdb, pg_ctl.*not found"):
        find_pg_bindir()
    with pytest.raises(RuntimeError, match="install the postgresql server package"):
        PrivatePostgres()


def test_private_deployment_serves_from_the_private_services(
    private_redis: PrivateRedis, private_postgres: PrivatePostgres
) -> None:
    with private_deployment(private_redis, private_postgres) as dep:
        assert dep.env["REDIS_URL"] == private_redis.url
        assert dep.env["DATABASE_URL"].startswith(private_postgres.url(""))
        host = dep.start_server("--no-feed")
        assert obtain_token(host, "alice", "alice-demo-pass")["access"]
        private_redis.stall()  # resumed at exit, so that the server shuts down at once
    assert not private_redis.stalled


def test_private_deployment_without_redis(private_postgres: PrivatePostgres) -> None:
    with private_deployment(None, private_postgres) as dep:
        assert "REDIS_URL" not in dep.env
        out = dep.shell("from project.broker.models import Account; print(Account.objects.count())")
        assert int(out.split()[-1]) > 0  # after Django's "N objects imported" line
