"""The tables every server process follows: account events, revocations, broadcasts.

Each is read from a :class:`~broker_ws.outbox.cursor.OutboxCursor` every
``OUTBOX_POLL_INTERVAL``, for what the bus did not bring, by the poll thread
of the process (:mod:`broker_ws.outbox.poller`).

Account events are read as ``(id, login, seq)`` only: the bus has usually
brought their frames already, and the hub fetches the rest by id
(:func:`broker_ws.outbox.store.events_by_id`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import models

from broker_ws.models import AccountEvent, Broadcast, Revocation
from broker_ws.outbox.cursor import OutboxCursor
from broker_ws.outbox.store import index_after, last_ids, rows_after

#: ``reader(cursor, missing_ids)``: the rows ``(id, ...)`` after the cursor and
#: those of the missing ids, in id order.
Reader = Callable[[int, Sequence[int]], Sequence[tuple[Any, ...]]]


@dataclass
class Tail:
    """One followed table, how it is read, and how far back a new process starts.

    Account events are re-read a little (``lookback`` rows) so that frames of
    transactions still open at start are not skipped; seq numbers make
    re-reading harmless. Revocations and broadcasts start at the end: an old
    one must not act again in a process that starts later.
    """

    model: type[models.Model]
    reader: Reader
    lookback: int
    cursor: OutboxCursor | None = None


def followed() -> tuple[Tail, Tail, Tail]:
    """Fresh tails of the account events (``(id, login, seq)``), revocations
    (``(id, user_id, revoked_at)``) and broadcasts (``(id, frame)``)."""
    return (
        Tail(AccountEvent, index_after, lookback=1000),
        Tail(Revocation, partial(rows_after, Revocation, ("user_id", "revoked_at")), lookback=0),
        Tail(Broadcast, partial(rows_after, Broadcast, ("frame",)), lookback=0),
    )


def start(tails: tuple[Tail, ...]) -> None:
    """Place each tail's cursor near the end of its table."""
    heads = last_ids([tail.model for tail in tails])
    for tail, head in zip(tails, heads, strict=True):
        tail.cursor = OutboxCursor(max(head - tail.lookback, 0))


def read(tails: tuple[Tail, ...]) -> list[list[tuple[Any, ...]]]:
    """The new rows of each tail (see :func:`followed`), advancing their cursors.

    One round trip tells each table's highest id; a table is read only when
    that is past its cursor or the cursor still waits for missing ids, so an
    idle process costs one small query per poll, not one per table. The
    cursors move only once every table was read: a failed read loses nothing.
    """
    heads = last_ids([tail.model for tail in tails])
    batches: list[list[tuple[Any, ...]]] = []
    for tail, head in zip(tails, heads, strict=True):
        cursor = tail.cursor
        assert cursor is not None
        missing = cursor.missing()
        if head <= cursor.position and not missing:
            batches.append([])
            continue
        batches.append(list(tail.reader(cursor.position, missing)))
    for tail, rows in zip(tails, batches, strict=True):
        assert tail.cursor is not None
        tail.cursor.advance(row[0] for row in rows)
    return batches
