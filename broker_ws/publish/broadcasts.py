"""Notifications to every session, delivered by every server process.

A broadcast is written to a table in the caller's transaction and put on the
bus when it commits, as ``"<id> <frame>"``. Server processes that the bus
does not reach (no Redis between processes, or Redis down) read it from the
table with the outbox poll; the id lets each process deliver it once. Only
the newest :data:`KEEP` rows are kept.
"""

from __future__ import annotations

import logging
from functools import partial

from django.db import DEFAULT_DB_ALIAS, transaction

from broker_ws.backends import get_backend
from broker_ws.models import Broadcast
from broker_ws.wire import channel_names
from broker_ws.wire.messages import encode_numbered

logger = logging.getLogger(__name__)

#: Broadcasts kept for processes that poll (far more than a poll interval needs).
KEEP = 1000


def record_broadcast(frame: str, using: str | None = None) -> int:
    """Store ``frame`` for every session and publish it after commit; return its id."""
    alias = using or DEFAULT_DB_ALIAS
    with transaction.atomic(using=alias, savepoint=False):
        row = Broadcast.objects.using(alias).create(frame=frame)
        Broadcast.objects.using(alias).filter(id__lte=row.id - KEEP).delete()
    transaction.on_commit(partial(_announce, row.id, frame), using=alias, robust=True)
    return row.id


def _announce(broadcast_id: int, frame: str) -> None:
    try:
        get_backend().publish(
            channel_names.everyone_channel(), encode_numbered(broadcast_id, frame)
        )
    except Exception as exc:
        logger.warning(
            "broker_ws: bus publish of a broadcast failed (%s); server processes will "
            "read it from the database",
            exc,
        )
