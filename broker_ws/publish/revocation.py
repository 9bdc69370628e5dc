"""Revoking a user's access: refuse its tokens and close its sessions everywhere.

:func:`revoke_user` records a :class:`~broker_ws.models.Revocation` in the
current transaction and, when it commits, tells every server process on the
bus; processes also find it in the table within ``OUTBOX_POLL_INTERVAL``
(the bus may be down, or absent between processes). Each closes that user's
sessions with 4004, and every authorization refuses tokens issued up to the
revocation (:mod:`broker_ws.auth.authenticate`, whatever the
``TOKEN_AUTHENTICATOR``). :func:`is_revoked` is the same check for a host's own
refresh or login view. Deactivating a user (``is_active = False``,
saved through the ORM) revokes it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

from channels.db import database_sync_to_async
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.utils import timezone

from broker_ws.backends import get_backend
from broker_ws.models import Revocation
from broker_ws.wire import channel_names
from broker_ws.wire.messages import encode_revocation

logger = logging.getLogger(__name__)


def _user_id(user: Any) -> str:
    return str(getattr(user, "pk", user))


def revoke_user(user: Any, using: str | None = None) -> None:
    """Close every session of ``user`` (a user or its primary key) and refuse its tokens.

    Tokens issued until now are refused from now on; tokens issued later
    (after the user logs in again) are accepted. Inside a transaction, this
    takes effect when it commits.
    """
    alias = using or DEFAULT_DB_ALIAS
    user_id = _user_id(user)
    row = Revocation.objects.using(alias).create(user_id=user_id, revoked_at=timezone.now())
    payload = revocation_payload(user_id, row.revoked_at)
    transaction.on_commit(partial(_announce, payload), using=alias, robust=True)
    transaction.on_commit(
        partial(_prune_superseded, user_id, row.id, row.revoked_at, alias),
        using=alias,
        robust=True,
    )


def _prune_superseded(user_id: str, row_id: int, revoked_at: dt.datetime, alias: str) -> None:
    """Delete the user's earlier revocations that the committed row ``row_id`` supersedes.

    A token is refused when any revocation of its user is at or after its
    ``iat`` (:func:`is_revoked`), so a revocation with a later or equal
    ``revoked_at`` refuses everything an earlier one did, and server
    processes that have not read the earlier row yet close the same
    sessions when they read this one. Pruning keeps the table at about one
    row per revoked user without a retention horizon, which would have to
    outlast the longest-lived token the host ever issues.

    Best effort, after the revoking transaction committed and in a short
    transaction of its own: rows another transaction holds are skipped
    (``SKIP LOCKED`` where the database has it), so a revocation never waits
    for, or deadlocks with, another one. What is left is pruned by the
    user's next revocation.
    """
    try:
        with transaction.atomic(using=alias):
            earlier = Revocation.objects.using(alias).filter(
                user_id=user_id, id__lt=row_id, revoked_at__lte=revoked_at
            )
            if connections[alias].features.has_select_for_update_skip_locked:
                earlier = earlier.select_for_update(skip_locked=True)
            ids = list(earlier.values_list("id", flat=True))
            if ids:
                Revocation.objects.using(alias).filter(id__in=ids).delete()
    except DatabaseError as exc:
        logger.warning("broker_ws: pruning earlier revocations failed (%s)", exc)


async def arevoke_user(user: Any) -> None:
    """Async :func:`revoke_user`."""
    await database_sync_to_async(revoke_user)(user)


def revocation_payload(user_id: str, revoked_at: dt.datetime) -> str:
    """Bus payload of a revocation: the user and when (sessions of tokens issued
    later, after a new login, stay open)."""
    return encode_revocation(user_id, revoked_at.timestamp())


def _announce(payload: str) -> None:
    try:
        get_backend().publish(channel_names.revocations_channel(), payload)
    except Exception as exc:
        logger.warning(
            "broker_ws: bus publish of a revocation failed (%s); server processes will "
            "read it from the database",
            exc,
        )


def is_revoked(user: Any, issued_at: dt.datetime | float | None, using: str | None = None) -> bool:
    """Whether a token of ``user`` issued at ``issued_at`` is refused by a revocation.

    The check that every authorization of a session makes, and broker_ws's
    refresh view (:class:`broker_ws.views.TokenRefreshView`), for a host's own
    refresh or login view: a token is refused when the user was revoked
    (:func:`revoke_user`, or deactivated) at or after the token was issued.

    Args:
        user: a user, or its primary key.
        issued_at: the token's issue time: an aware datetime, or seconds since the
            epoch (a JWT's ``iat``). ``None`` (a token without one) is covered by any
            revocation of the user.
        using: the database alias to read (the default one).

    Raises:
        django.db.DatabaseError: the table could not be read.
    """
    rows = Revocation.objects.using(using or DEFAULT_DB_ALIAS).filter(user_id=_user_id(user))
    if issued_at is not None:
        if not isinstance(issued_at, dt.datetime):
            issued_at = dt.datetime.fromtimestamp(float(issued_at), tz=dt.UTC)
        rows = rows.filter(revoked_at__gte=issued_at)
    return rows.exists()


async def ais_revoked(
    user: Any, issued_at: dt.datetime | float | None, using: str | None = None
) -> bool:
    """:func:`is_revoked` for async code (it runs in the database thread)."""
    return await database_sync_to_async(is_revoked)(user, issued_at, using)


def latest_revocations(user_ids: Iterable[str]) -> dict[str, dt.datetime]:
    """The latest revocation of each of ``user_ids`` that has one, in one query."""
    from django.db.models import Max

    ids = sorted(set(user_ids))
    if not ids:
        return {}
    rows = (
        Revocation.objects.filter(user_id__in=ids)
        .values("user_id")
        .annotate(latest=Max("revoked_at"))
        .values_list("user_id", "latest")
    )
    return {str(user_id): latest for user_id, latest in rows}


def revoke_deactivated(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_save`` of the user model: a user saved inactive is revoked."""
    if kwargs.get("raw") or getattr(instance, "is_active", True):
        return
    revoke_user(instance, using=kwargs.get("using"))
