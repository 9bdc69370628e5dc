"""REST snapshots: the current account state in the stream's own frames.

A client that reconnects without resume (or is told to ``resync``) fetches
this and parses it with its stream parser: every bound model's current rows
of the caller's logins, each encoded exactly as the stream would send it,
numbered with the login's current seq. The stream then continues with
seq + 1, so the client knows precisely where it stands.

Rows and seqs are read in one transaction holding the logins' sequence rows
(``SELECT ... FOR UPDATE`` where the database has it; SQLite serialises
writers anyway), so no save of those logins can commit in between.

Beside them, the last live state published of each login and declared state
marker (:mod:`broker_ws.publish.state`), read from the backend: state frames
have no seq, so they are listed apart (``"state"``), and a later live one
simply replaces them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from django.core.exceptions import FieldDoesNotExist
from django.db import router, transaction
from django.db.models import Q

from broker_ws.backends import get_backend
from broker_ws.conf import conf
from broker_ws.models import LoginSequence
from broker_ws.publish import bindings
from broker_ws.wire.frames import join_account

logger = logging.getLogger(__name__)

#: Markers in the order a snapshot lists them.
MARKER_ORDER = {"b": 0, "o": 1, "a": 2}


def account_snapshot(logins: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """The current seq of each login and the frames of their current rows."""
    wanted = list(dict.fromkeys(str(login) for login in logins))
    encoded: list[str] = []
    with transaction.atomic():
        held = LoginSequence.objects.select_for_update().filter(login__in=wanted)
        found = dict(held.values_list("login", "seq"))
        seqs = {login: found.get(login, 0) for login in wanted}
        ordered = sorted(bindings.bindings().values(), key=lambda b: MARKER_ORDER[b.marker])
        for binding in ordered:
            lookups = binding.login_lookups
            if not lookups or not wanted:
                continue  # a callable login cannot be queried
            belongs = Q()
            for lookup in lookups:
                belongs |= Q(**{f"{lookup}__in": wanted})
            rows = binding.model._default_manager.filter(belongs)
            joined = related_paths(binding)
            if joined:
                rows = rows.select_related(*joined)  # not one query per row for its login
            if binding.current:
                rows = rows.filter(**binding.current)
            for instance in rows.order_by("pk"):
                # A row of several logins is listed once for each of the caller's.
                for login, (head, tail) in binding.frame_parts(instance):
                    if login in seqs:
                        encoded.append(join_account(head, seqs[login], tail))
    return seqs, encoded


def related_paths(binding: bindings.Binding) -> list[str]:
    """The forward relations that ``binding``'s attribute paths walk
    (``account`` for ``account.login``), as ``select_related`` takes them.

    Without them a snapshot reads each row's related object with a query of
    its own. A path is joined only as far as it goes through concrete
    foreign keys and one-to-one fields whose model is read from the same
    database; it stops at anything else (a property, a reverse or generic
    relation), whose attributes are read per row, as before. Field paths
    stop at a foreign key without a database constraint: the inner join
    would drop a row whose target is missing, where reading it per row fails
    loudly. (The login path is joined by the snapshot's filter anyway.)
    """
    database = router.db_for_read(binding.model)
    paths: set[str] = set()
    accessors = [
        *((path, True) for path in bindings.login_accessors(binding.login)),
        *((path, False) for path in binding.fields),
    ]
    for accessor, is_login in accessors:
        if not isinstance(accessor, str) or "." not in accessor:
            continue
        model: Any = binding.model
        walked: list[str] = []
        for name in accessor.split(".")[:-1]:
            try:
                field = model._meta.get_field(name)
            except FieldDoesNotExist:
                break
            target = getattr(field, "related_model", None)
            if (
                not getattr(field, "concrete", False)
                or not (field.many_to_one or field.one_to_one)
                or field.auto_created
                or target is None
                or isinstance(target, str)
                or name != field.name  # "account_id.x": a column, not the relation
                or router.db_for_read(target) != database
                or not (is_login or getattr(field, "db_constraint", True))
            ):
                break
            walked.append(name)
            model = target
        if walked:
            paths.add("__".join(walked))
    return sorted(paths)


def last_states(logins: Sequence[str]) -> list[str]:
    """The last state frame published of each login and declared marker that has
    one: by login (in the order given), then marker (in ``STATE_MARKERS`` order).

    A backend that cannot be read (Redis down) gives none, logged as a WARNING:
    the rows and seqs, which the database holds, are still worth answering, and
    the next live state frame brings the state anyway.
    """
    declared = conf.STATE_MARKERS
    markers = list(declared) if isinstance(declared, dict) else []
    wanted = list(dict.fromkeys(str(login) for login in logins))
    if not markers or not wanted:
        return []
    try:
        found = get_backend().read_states(wanted, markers)
    except Exception as exc:
        logger.warning("broker_ws: no live state in a snapshot, the bus failed (%s)", exc)
        return []
    pairs = [(login, marker) for login in wanted for marker in markers]
    return [found[pair] for pair in pairs if pair in found]


def encode_snapshot(seqs: dict[str, int], frames: list[str], states: Sequence[str] = ()) -> bytes:
    """``{"seq": {...}, "frames": [...], "state": [...]}`` with the frames embedded
    as encoded."""
    return orjson.dumps(
        {
            "seq": seqs,
            "frames": [orjson.Fragment(f) for f in frames],
            "state": [orjson.Fragment(f) for f in states],
        }
    )
