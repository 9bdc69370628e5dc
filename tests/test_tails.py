"""What each server process reads from the outbox tables on every poll."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from broker_ws import tails
from broker_ws.models import AccountEvent

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
    assert events == [
        (first.id, "7001", 1, '["b","7001",1]'),
        (second.id, "7002", 1, '["b","7002",1]'),
    ]
    assert (revocations, broadcasts) == ([], [])
    assert tails.read(followed) == [[], [], []]


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
