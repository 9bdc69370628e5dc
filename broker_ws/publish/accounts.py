"""The one write path of account frames: outbox in the transaction, bus after commit.

Model saves (:mod:`broker_ws.publish.bindings`), :func:`broker_ws.push` and
per-login :func:`broker_ws.notify` all end here. The frames are numbered and
stored by :func:`broker_ws.outbox.store.record` in the caller's transaction (or in
one of their own under autocommit), then published on the bus when that
transaction commits. A rolled-back transaction leaves nothing to send; a
bus failure after commit is logged and never raised into the code that
saved, and the server processes read those frames back from the outbox.
"""

from __future__ import annotations

import logging
from functools import partial

from django.db import DEFAULT_DB_ALIAS, transaction

from broker_ws.backends import get_backend
from broker_ws.conf import conf
from broker_ws.outbox import store
from broker_ws.wire import channel_names
from broker_ws.wire.messages import encode_numbered

logger = logging.getLogger(__name__)


def emit(
    by_login: dict[str, list[store.FrameParts]], using: str | None = None
) -> list[store.Event]:
    """Record the frames of each login now and publish them after commit.

    Args:
        by_login: frame parts (see :func:`broker_ws.wire.frames.account_parts`) per login.
        using: the database alias of the transaction the frames belong to.

    Returns:
        The recorded events, with their sequence numbers.
    """
    alias = using or DEFAULT_DB_ALIAS
    events = store.record(by_login, alias, conf.HISTORY_SIZE)
    if events:
        transaction.on_commit(partial(publish_committed, events), using=alias, robust=True)
    return events


def publish_committed(events: list[store.Event]) -> None:
    """Put committed events on the bus; a failure only delays them."""
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
