"""Resume after a reconnect: the account frames a client missed.

A client that reconnects names, per login, the last seq it saw. Up to the
seq the ``authorized`` reply announces, the missed frames come from the
database outbox; everything later reaches the session live. When the kept
history no longer reaches back (or the client claims a seq the server never
gave), the client is told to resync that login over REST instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from channels.db import database_sync_to_async

from broker_ws import metrics
from broker_ws.outbox import store
from broker_ws.wire import frames


def _missed(
    resume: Mapping[str, int], current: Mapping[str, int]
) -> tuple[list[str], dict[str, int], dict[str, int]]:
    replay: list[str] = []
    resync: dict[str, int] = {}
    seen: dict[str, int] = {}
    for login, after in resume.items():
        upto = current.get(login)
        if upto is None:
            continue  # not this session's login
        if after == upto:
            metrics.RESUMES.labels(outcome="up_to_date").inc()
            continue
        if after > upto:
            # The client saw frames on a process that is ahead of this one:
            # they arrive here soon and the session skips them. A seq never
            # given at all (a restored database) means the client must resync.
            if store.current_seqs([login])[login] >= after:
                seen[login] = after
                metrics.RESUMES.labels(outcome="ahead").inc()
            else:
                resync[login] = upto
                metrics.RESUMES.labels(outcome="resync").inc()
            continue
        missed = store.history(login, after)
        if missed is None:
            resync[login] = upto
            metrics.RESUMES.labels(outcome="resync").inc()
            continue
        replay.extend(event.frame for event in missed if event.seq <= upto)
        metrics.RESUMES.labels(outcome="replayed").inc()
    return replay, resync, seen


async def missed_frames(
    resume: Mapping[str, int], current: Mapping[str, int]
) -> tuple[list[str], dict[str, int]]:
    """Frames to send right after ``authorized``, and the seqs the client already has.

    Args:
        resume: last seq seen per login, as the client sent it; logins the
            session is not linked to are ignored.
        current: the seq per login announced in ``authorized``.

    Returns:
        A ``resync`` reply naming the logins whose history is gone (if any)
        followed by every missed frame of the other logins in seq order;
        and, per login, the seq up to which live frames are to be skipped.
    """
    if all(current.get(login, after) == after for login, after in resume.items()):
        # Nothing missed (the common reconnect): no trip to a database thread,
        # which a storm of reconnects would otherwise queue up behind.
        for login in resume:
            if login in current:
                metrics.RESUMES.labels(outcome="up_to_date").inc()
        return [], {}
    replay, resync, seen = await database_sync_to_async(_missed)(resume, current)
    return ([frames.control("resync", resync)] if resync else []) + replay, seen
