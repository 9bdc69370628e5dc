"""Resume after a reconnect: the account frames a client missed.

A client that reconnects names, per login, the last seq it saw. Up to the
seq the ``authorized`` reply announces, the missed frames come from the
database outbox; everything later reaches the session live. When the kept
history no longer reaches back (or the client claims a seq the server never
gave), the client is told to resync that login over REST instead.

Seqs are only comparable within one epoch of a login's numbering
(:class:`~broker_ws.models.LoginSequence`): a login the client resumes with
an epoch other than the current one is told to resync whatever its seq says
(the counter was reset or restored, and a seq the client holds may now name
another frame). An empty epoch, on either side, is a login that had no
numbered frame when it was read; it matches any epoch.
"""

from __future__ import annotations

from collections.abc import Mapping

from channels.db import database_sync_to_async

from broker_ws import metrics
from broker_ws.outbox import store
from broker_ws.outbox.store import NO_EPOCH
from broker_ws.wire import frames


def other_epoch(login: str, after: int, theirs: Mapping[str, str], ours: Mapping[str, str]) -> bool:
    """Whether the client's seq ``after`` of ``login`` belongs to another epoch than
    the current one (then it says nothing about what the client has)."""
    if after <= 0:
        return False  # the client has nothing of this login: any epoch replays it all
    their_epoch = theirs.get(login, NO_EPOCH)
    our_epoch = ours.get(login, NO_EPOCH)
    return their_epoch != our_epoch and NO_EPOCH not in (their_epoch, our_epoch)


def _missed(
    resume: Mapping[str, int],
    current: Mapping[str, int],
    their_epochs: Mapping[str, str],
    our_epochs: Mapping[str, str],
) -> tuple[list[str], dict[str, int], dict[str, int]]:
    replay: list[str] = []
    resync: dict[str, int] = {}
    seen: dict[str, int] = {}
    for login, after in resume.items():
        upto = current.get(login)
        if upto is None:
            continue  # not this session's login
        if other_epoch(login, after, their_epochs, our_epochs):
            resync[login] = upto
            metrics.RESUMES.labels(outcome="resync").inc()
            continue
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
    resume: Mapping[str, int],
    current: Mapping[str, int],
    their_epochs: Mapping[str, str] | None = None,
    our_epochs: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, int]]:
    """Frames to send right after ``authorized``, and the seqs the client already has.

    Args:
        resume: last seq seen per login, as the client sent it; logins the
            session is not linked to are ignored.
        current: the seq per login announced in ``authorized``.
        their_epochs: the epoch per login the client's seqs belong to (none
            given: the seqs are taken as of the current epoch, as in v1.0).
        our_epochs: the epoch per login announced in ``authorized``.

    Returns:
        A ``resync`` reply naming the logins whose history is gone (if any)
        followed by every missed frame of the other logins in seq order;
        and, per login, the seq up to which live frames are to be skipped.
    """
    theirs = their_epochs or {}
    ours = our_epochs or {}
    if all(
        current.get(login, after) == after and not other_epoch(login, after, theirs, ours)
        for login, after in resume.items()
    ):
        # Nothing missed (the common reconnect): no trip to a database thread,
        # which a storm of reconnects would otherwise queue up behind.
        for login in resume:
            if login in current:
                metrics.RESUMES.labels(outcome="up_to_date").inc()
        return [], {}
    replay, resync, seen = await database_sync_to_async(_missed)(resume, current, theirs, ours)
    return ([frames.control("resync", resync)] if resync else []) + replay, seen
