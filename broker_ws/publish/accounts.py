"""The one write path of account frames: outbox in the transaction, bus after commit.

Model saves (:mod:`broker_ws.publish.bindings`), :func:`broker_ws.push` and
per-login :func:`broker_ws.notify` all end here. The frames are numbered and
stored by :func:`broker_ws.outbox.store.record` in the caller's transaction (or in
one of their own under autocommit), then published on the bus when that
transaction commits. A rolled-back transaction leaves nothing to send; a
bus failure after commit is logged and never raised into the code that
saved, and the server processes read those frames back from the outbox.

A row saved again in the same transaction (a host's ``post_save`` handler that
saves the instance once more, ``push_saved`` of a row already saved) does not
get a second frame: its first frame, already in the outbox with its seq, is
rewritten with the new state. So the frames of a transaction carry the states
it commits, never one that was overwritten before the commit, and a login's
seq still counts one frame per row. When a rewrite happened, the frames are
read back from the outbox after the commit before they are published, so a
rewrite undone by a rolled-back savepoint is not published either. Under
autocommit every save is a transaction of its own, and each gets its frame.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from broker_ws.backends import get_backend
from broker_ws.conf import conf
from broker_ws.models import AccountEvent
from broker_ws.outbox import store
from broker_ws.wire import channel_names
from broker_ws.wire.frames import FrameParts, join_account
from broker_ws.wire.messages import encode_numbered

logger = logging.getLogger(__name__)


class Pending(NamedTuple):
    """One account frame to record: its login, its parts and, for a model row,
    the row's identity (``(model label, pk, login)``), which lets a later save of
    the row in the same transaction replace it."""

    login: str
    parts: FrameParts
    row: Hashable | None = None


class _CommitBatch:
    """The frames one :func:`emit` recorded, published by ``on_commit``."""

    def __init__(self, events: list[store.Event], alias: str) -> None:
        self.events = events
        self.alias = alias
        self.rewritten = False
        self.rows: list[Hashable] = []

    def __call__(self) -> None:
        _forget_rows(self.alias, self.rows)
        events = self.events
        if self.rewritten:
            events = _read_back(events, self.alias)
        publish_committed(events)


#: Per database connection (one per thread and alias): the rows framed in its
#: current transaction, each with its batch and its index there.
_framed_rows: weakref.WeakKeyDictionary[Any, dict[Hashable, tuple[_CommitBatch, int]]] = (
    weakref.WeakKeyDictionary()
)


def emit(pending: Sequence[Pending], using: str | None = None) -> list[store.Event]:
    """Record the frames now and publish them after commit.

    Args:
        pending: the frames, in order (see :func:`broker_ws.wire.frames.account_parts`).
        using: the database alias of the transaction the frames belong to.

    Returns:
        The event of each pending frame, in the same order (a row framed again in
        this transaction gives its first event, now with the new frame).
    """
    alias = using or DEFAULT_DB_ALIAS
    connection = connections[alias]
    # The same row twice in this call: one frame, at the first place, with the last state.
    unique: list[Pending] = []
    place_of: list[int] = []
    first_of_row: dict[Hashable, int] = {}
    for item in pending:
        if item.row is not None and item.row in first_of_row:
            unique[first_of_row[item.row]] = item
        else:
            if item.row is not None:
                first_of_row[item.row] = len(unique)
            unique.append(item)
        place_of.append(first_of_row.get(item.row, len(unique) - 1))
    rows = _rows_of(connection) if connection.in_atomic_block else None
    events: list[store.Event | None] = [None] * len(unique)
    fresh: dict[str, list[int]] = {}  # login -> indexes into unique
    for index, item in enumerate(unique):
        if rows is not None and item.row is not None and item.row in rows:
            events[index] = _rewrite(connection, rows[item.row], item, alias)
        if events[index] is None:
            fresh.setdefault(item.login, []).append(index)
    if fresh:
        # store.record numbers and returns the frames login by login, in sorted order.
        order = [index for login in sorted(fresh) for index in fresh[login]]
        recorded = store.record(
            {login: [unique[i].parts for i in indexes] for login, indexes in fresh.items()},
            alias,
            conf.HISTORY_SIZE,
        )
        batch = _CommitBatch(recorded, alias)
        for position, (index, event) in enumerate(zip(order, recorded, strict=True)):
            events[index] = event
            row = unique[index].row
            if rows is not None and row is not None:
                rows[row] = (batch, position)
                batch.rows.append(row)
        transaction.on_commit(batch, using=alias, robust=True)
    return [events[place] for place in place_of]  # type: ignore[misc]  # all set above


def _rows_of(connection: Any) -> dict[Hashable, tuple[_CommitBatch, int]]:
    rows = _framed_rows.setdefault(connection, {})
    if rows and not getattr(connection, "run_on_commit", None):
        # Nothing pending: what is kept belongs to a rolled-back transaction. (A
        # truthiness test, not _hooks(): this runs on every save in a transaction.)
        rows.clear()
    return rows


def _rewrite(
    connection: Any, slot: tuple[_CommitBatch, int], item: Pending, alias: str
) -> store.Event | None:
    """Put the row's new state into the frame it already has in this transaction.

    None when that frame is gone (its savepoint rolled back, or it was pruned):
    the caller records a new one.
    """
    batch, position = slot
    if not any(func is batch for func in _hooks(connection)):
        return None  # its transaction or savepoint ended
    event = batch.events[position]
    head, tail = item.parts
    frame = join_account(head, event.seq, tail)
    updated = AccountEvent.objects.using(alias).filter(id=event.id).update(frame=frame)
    if not updated:
        return None
    batch.events[position] = event = event._replace(frame=frame)
    batch.rewritten = True
    return event


def _hooks(connection: Any) -> list[Any]:
    """The callables waiting for the connection's transaction to commit.

    Django keeps them in ``connection.run_on_commit`` as ``(savepoint ids, func,
    robust)`` tuples (since 4.2), and drops those of a rolled-back savepoint.
    If that changes, nothing is found: every save then gets its own frame, as
    under autocommit.
    """
    hooks = getattr(connection, "run_on_commit", None)
    if not isinstance(hooks, list):
        return []
    return [entry[1] for entry in hooks if isinstance(entry, tuple) and len(entry) >= 2]


def _forget_rows(alias: str, batch_rows: list[Hashable]) -> None:
    if not batch_rows:
        return
    rows = _framed_rows.get(connections[alias])
    if rows:
        for row in batch_rows:
            rows.pop(row, None)


def _read_back(events: list[store.Event], alias: str) -> list[store.Event]:
    """The committed frames of ``events`` (a rewrite may have been rolled back)."""
    try:
        return store.events_by_id([e.id for e in events], using=alias)
    except Exception as exc:
        logger.warning(
            "broker_ws: reading back %d committed account frame(s) failed (%s); "
            "server processes will read them from the outbox",
            len(events),
            exc,
        )
        return []


def publish_committed(events: list[store.Event]) -> None:
    """Put committed events on the bus; a failure only delays them."""
    if not events:
        return
    try:
        get_backend().publish_many(
            [
                (channel_names.login_channel(e.login), encode_numbered(e.seq, e.frame))
                for e in events
            ]
        )
    except Exception as exc:
        logger.warning(
            "broker_ws: bus publish of %d committed account frame(s) failed (%s); "
            "server processes will read them from the outbox",
            len(events),
            exc,
        )
