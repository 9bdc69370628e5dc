"""What each server process reads from the outbox tables on every poll."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from broker_ws.models import AccountEvent, Revocation
from broker_ws.outbox import store, tails

pytestmark = pytest.mark.django_db


def started() -> tuple[tails.Tail, tails.Tail, tails.Tail]:
    followed = tails.followed()
    tails.start(followed)
    return followed


def test_an_idle_poll_is_one_query_for_all_three_tables() -> None:
    """Nothing new anywhere: one round trip, not an ORM query per table."""
    followed = started()
    with CaptureQueriesContext(connection) as queries:
        assert tails.read(followed) == [[], [], []]
    assert len(queries) == 1, [q["sql"] for q in queries.captured_queries]


def test_new_rows_are_read_once_in_id_order() -> None:
    followed = started()
    first = AccountEvent.objects.create(login="7001", seq=1, frame='["b","7001",1]')
    second = AccountEvent.objects.create(login="7002", seq=1, frame='["b","7002",1]')
    events, revocations, broadcasts = tails.read(followed)
    assert events == [(first.id, "7001", 1), (second.id, "7002", 1)]
    assert (revocations, broadcasts) == ([], [])
    assert tails.read(followed) == [[], [], []]
    assert store.events_by_id([second.id, first.id]) == [
        store.Event(first.id, "7001", 1, '["b","7001",1]'),
        store.Event(second.id, "7002", 1, '["b","7002",1]'),
    ]


def test_a_busy_poll_reads_ids_logins_and_seqs_but_no_frame() -> None:
    """The bus has usually delivered the new events already: two short queries, no
    frame text, no ORM query per table."""
    followed = started()
    AccountEvent.objects.create(login="7001", seq=1, frame="x" * 10_000)
    with CaptureQueriesContext(connection) as queries:
        tails.read(followed)
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 2, statements
    assert not any("frame" in sql for sql in statements), statements


def test_a_failed_read_moves_no_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    """When one table cannot be read, the rows read from the others are read again."""
    followed = started()
    event = AccountEvent.objects.create(login="7001", seq=1, frame="f")
    Revocation.objects.create(user_id="1", revoked_at=timezone.now())
    revocations_tail = followed[1]

    def broken(cursor: int, missing: Sequence[int]) -> list[tuple[Any, ...]]:
        raise DatabaseError("database is locked")

    working = revocations_tail.reader
    monkeypatch.setattr(revocations_tail, "reader", broken)
    with pytest.raises(DatabaseError):
        tails.read(followed)
    monkeypatch.setattr(revocations_tail, "reader", working)
    events, revocations, _ = tails.read(followed)
    assert events == [(event.id, "7001", 1)]
    assert [row[1] for row in revocations] == ["1"]


def test_a_row_below_the_cursor_that_commits_late_is_still_read() -> None:
    """An id skipped because its transaction was still open is asked for again, even
    when no newer row exists (the highest id is not past the cursor)."""
    followed = started()
    events_tail = followed[0]
    assert events_tail.cursor is not None
    late_id = events_tail.cursor.position + 1
    AccountEvent.objects.create(id=late_id + 1, login="7003", seq=2, frame="f2")
    assert [row[0] for row in tails.read(followed)[0]] == [late_id + 1]
    AccountEvent.objects.create(id=late_id, login="7003", seq=1, frame="f1")  # commits late
    assert [row[0] for row in tails.read(followed)[0]] == [late_id]
    assert tails.read(followed) == [[], [], []]
