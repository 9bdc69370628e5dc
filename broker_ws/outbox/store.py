"""Database side of account frames: numbering, recording and reading back.

Write path (:func:`record`), called inside the saving transaction: take the
login's next sequence numbers, splice them into the frames encoded by
:mod:`broker_ws.wire.frames`, insert the rows and prune the login's history.

Read path, called by server processes through ``database_sync_to_async``
(:func:`index_after` by their poll thread, :mod:`broker_ws.outbox.poller`):
the current seq of logins (:func:`current_seqs`), a login's frames after a
seq (:func:`history`), the ``(id, login, seq)`` of every event after a
cursor (:func:`index_after`) and the frames of chosen events
(:func:`events_by_id`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from django.db import DEFAULT_DB_ALIAS, connections, models, router, transaction
from django.db.models import F

from broker_ws.models import AccountEvent, LoginSequence, new_epoch
from broker_ws.wire.frames import FrameParts, join_account


class Event(NamedTuple):
    """One recorded account frame."""

    id: int
    login: str
    seq: int
    frame: str


_UPSERT = (
    "INSERT INTO {table} (login, seq, epoch) VALUES (%s, %s, %s) "
    "ON CONFLICT (login) DO UPDATE SET seq = {table}.seq + excluded.seq RETURNING seq"
)


def _allocate(login: str, count: int, using: str) -> int:
    """Reserve ``count`` sequence numbers of ``login``; return the last one.

    One upsert where the database has ``ON CONFLICT ... RETURNING`` (SQLite
    3.35+, PostgreSQL); a locked read-modify-write elsewhere. Either way
    the row stays locked until the saving transaction ends.
    """
    connection = connections[using]
    if connection.vendor in ("postgresql", "sqlite"):
        table = connection.ops.quote_name(LoginSequence._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(_UPSERT.format(table=table), [login, count, new_epoch()])
            return int(cursor.fetchone()[0])
    manager = LoginSequence.objects.db_manager(using)
    row, _ = manager.select_for_update().get_or_create(login=login)
    manager.filter(pk=login).update(seq=F("seq") + count)
    return row.seq + count


def record(by_login: dict[str, list[FrameParts]], using: str, history_size: int) -> list[Event]:
    """Number and store the frames of each login; return them in order.

    Must run inside a transaction (the caller's, or its own atomic block):
    the frames exist exactly when that transaction commits.
    """
    events: list[AccountEvent] = []
    with transaction.atomic(using=using, savepoint=False):
        for login in sorted(by_login):  # one lock order across transactions
            parts = by_login[login]
            last = _allocate(login, len(parts), using)
            first = last - len(parts) + 1
            events.extend(
                AccountEvent(login=login, seq=seq, frame=join_account(head, seq, tail))
                for seq, (head, tail) in zip(range(first, last + 1), parts, strict=True)
            )
            if last > history_size:
                AccountEvent.objects.using(using).filter(
                    login=login, seq__lte=last - history_size
                ).delete()
        created = AccountEvent.objects.using(using).bulk_create(events)
    return [Event(e.id, e.login, e.seq, e.frame) for e in created]


def current_seqs(logins: Iterable[str]) -> dict[str, int]:
    """The last seq given to each login (0 for a login with no frame yet)."""
    return {login: seq for login, (seq, _) in numbering(logins).items()}


#: The epoch of a login with no numbered frame yet: any epoch continues it.
NO_EPOCH = ""


def numbering(logins: Iterable[str]) -> dict[str, tuple[int, str]]:
    """``(last seq, epoch)`` of each login; ``(0, NO_EPOCH)`` for a login with no
    frame yet."""
    wanted = list(logins)
    found = {
        login: (seq, epoch)
        for login, seq, epoch in LoginSequence.objects.filter(login__in=wanted).values_list(
            "login", "seq", "epoch"
        )
    }
    return {login: found.get(login, (0, NO_EPOCH)) for login in wanted}


def renew_epochs(logins: Iterable[str] | None = None) -> int:
    """Give these logins (None: every login) a new epoch each; return how many.

    For after a database restore: the restored counters repeat seqs that
    clients already saw with other frames, and a new epoch makes each client
    that resumes with the old one resync instead of trusting its seq.
    """
    rows = LoginSequence.objects.all()
    if logins is not None:
        rows = rows.filter(login__in=list(logins))
    renewed = 0
    with transaction.atomic(using=router.db_for_write(LoginSequence)):
        for login in rows.select_for_update().values_list("login", flat=True).iterator():
            LoginSequence.objects.filter(pk=login).update(epoch=new_epoch())
            renewed += 1
    return renewed


def history(login: str, after: int) -> list[Event] | None:
    """Frames of ``login`` with seq > ``after``, in order.

    None when the kept history no longer reaches ``after + 1``.
    """
    rows = [
        Event(*row)
        for row in AccountEvent.objects.filter(login=login, seq__gt=after)
        .order_by("seq")
        .values_list("id", "login", "seq", "frame")
    ]
    if rows and rows[0].seq != after + 1:
        return None
    if not rows and current_seqs([login])[login] > after:
        return None
    return rows


def last_ids(tables: Sequence[type[models.Model]]) -> list[int]:
    """The highest id of each model's table (0 when empty), in one round trip per
    database.

    A server process asks this when it starts following the tables, and every
    ``OUTBOX_POLL_INTERVAL`` before reading any of them: one raw
    ``SELECT (SELECT MAX(id) ...), ...`` on the primary-key indexes, where
    building and running an ORM query per table cost ~2 % of a core with
    nothing new to read (bench/README.md, scenario c).
    """
    heads: dict[type[models.Model], int] = {}
    by_alias: dict[str, list[type[models.Model]]] = {}
    for model in tables:
        by_alias.setdefault(_read_alias(model), []).append(model)
    for alias, group in by_alias.items():
        connection = connections[alias]
        quote = connection.ops.quote_name
        columns = ", ".join(
            f"(SELECT MAX({quote(_pk_column(model))}) FROM {quote(model._meta.db_table)})"
            for model in group
        )
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {columns}")
            row = cursor.fetchone() or [None] * len(group)
        for model, head in zip(group, row, strict=True):
            heads[model] = int(head or 0)
    return [heads[model] for model in tables]


def _read_alias(model: type[models.Model]) -> str:
    return router.db_for_read(model) or DEFAULT_DB_ALIAS


def _pk_column(model: type[models.Model]) -> str:
    column = model._meta.pk.column if model._meta.pk is not None else None
    assert column, f"{model.__name__} has no primary-key column"
    return column


def rows_after(
    model: type[models.Model],
    fields: Sequence[str],
    cursor: int,
    also: Sequence[int] = (),
    limit: int = 1000,
) -> list[tuple[Any, ...]]:
    """``(id, *fields)`` of rows with id > ``cursor`` (at most ``limit``) and of those
    with ids in ``also``, in id order.

    ``also`` holds ids skipped earlier because their transaction had not
    committed yet (see :class:`broker_ws.outbox.cursor.OutboxCursor`). Every table a
    server process tails (events, revocations, broadcasts) is read this way.
    """
    manager = model._default_manager
    rows = list(manager.filter(id__gt=cursor).order_by("id").values_list("id", *fields)[:limit])
    if also:
        rows += manager.filter(id__in=list(also)).values_list("id", *fields)
    return sorted(rows)


def index_after(
    cursor: int, also: Sequence[int] = (), limit: int = 1000
) -> list[tuple[int, str, int]]:
    """``(id, login, seq)`` of the account events after ``cursor`` (at most ``limit``)
    and of those with ids in ``also``, in id order; see :func:`rows_after`.

    What every poll of a busy outbox reads: raw SQL on three short columns,
    without the frames. A server process then asks :func:`events_by_id` for
    the few frames its bus did not bring; with the bus healthy, none
    (bench/README.md, scenario c).
    """
    connection = connections[_read_alias(AccountEvent)]
    quote = connection.ops.quote_name
    pk = quote(_pk_column(AccountEvent))
    select = (
        f"SELECT {pk}, {quote('login')}, {quote('seq')} "
        f"FROM {quote(AccountEvent._meta.db_table)} WHERE "
    )
    queries = [(f"{pk} > %s ORDER BY {pk} LIMIT %s", [cursor, limit])]
    if also:
        queries.append((f"{pk} IN ({', '.join(['%s'] * len(also))})", list(also)))
    rows: list[tuple[int, str, int]] = []
    with connection.cursor() as db:
        for where, params in queries:
            db.execute(select + where, params)
            rows.extend((int(i), str(login), int(seq)) for i, login, seq in db.fetchall())
    return sorted(rows)


def events_by_id(ids: Sequence[int], using: str | None = None) -> list[Event]:
    """The account events with these ids (those still kept), in id order.

    ``using``: the database to read (default: the router's for reads).
    """
    manager = AccountEvent.objects.using(using) if using else AccountEvent.objects
    rows = manager.filter(id__in=list(ids)).order_by("id")
    return [Event(*row) for row in rows.values_list("id", "login", "seq", "frame")]
