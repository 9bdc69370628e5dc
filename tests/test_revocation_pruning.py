"""A revocation prunes the user's earlier ones after it commits, on PostgreSQL, without
waiting for rows another transaction holds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Deployment, deployment

COUNT_ALICE = (
    "from django.contrib.auth import get_user_model;"
    "from broker_ws.models import Revocation;"
    "uid = str(get_user_model().objects.get(username='alice').pk);"
    "print('ROWS', uid, Revocation.objects.filter(user_id=uid).count())"
)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Deployment]:
    with deployment("postgres", tmp_path) as dep:
        yield dep


def alice_rows(dep: Deployment) -> tuple[str, int]:
    """Alice's user id and how many revocation rows she has."""
    line = next(line for line in dep.shell(COUNT_ALICE).splitlines() if line.startswith("ROWS "))
    _, user_id, count = line.split()
    return user_id, int(count)


def test_revoking_prunes_after_commit_and_skips_rows_another_transaction_holds(
    postgres: Deployment,
) -> None:
    """Two revocations leave one row. While another transaction holds that row, a third
    revocation neither waits nor fails: it skips the row, which the next one prunes."""
    import psycopg

    postgres.manage("ws_revoke", "alice")
    postgres.manage("ws_revoke", "alice")
    user_id, count = alice_rows(postgres)
    assert count == 1
    with psycopg.connect(postgres.env["DATABASE_URL"]) as holder:
        holder.execute(
            "SELECT id FROM broker_ws_revocation WHERE user_id = %s FOR UPDATE", (user_id,)
        )
        started = time.monotonic()
        postgres.manage("ws_revoke", "alice", timeout=30)  # waiting would time out
        assert time.monotonic() - started < 20
        assert alice_rows(postgres)[1] == 2
        holder.rollback()
    postgres.manage("ws_revoke", "alice")
    assert alice_rows(postgres)[1] == 1
