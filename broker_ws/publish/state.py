"""Live account state: values that move with every quote and are never saved.

Equity, margin and floating profit change with each tick of an open trade's
symbol; a backend cannot write a row (nor an outbox frame) per account per
tick. :func:`publish_state` sends ``[marker, login, null, ...fields]`` to the
sessions of ``login`` instead, for a marker the host declares in
``BROKER_WS['STATE_MARKERS']`` (marker -> field names). A state frame:

* carries no seq (``null`` where account frames have it) and is never
  written to the outbox, so a resume never replays it and gaps do not apply:
  each frame replaces the previous one of its login and marker;
* is conflated: a slow session gets the latest of each login and marker, never
  a backlog, and no session gets more than ``STATE_MAX_RATE`` per second of
  one login and marker (the latest arrives, trailing: see
  :mod:`broker_ws.session.account_state`);
* reaches only the sessions whose token is linked to ``login`` (it travels on
  the login's own bus channel, which only they listen to);
* is kept as the login's last state of that marker by the backend (memory, or
  Redis with an expiry: :data:`broker_ws.backends.redis.STATE_TTL`), which
  the REST snapshot returns (:func:`broker_ws.outbox.snapshot.last_states`).

The frame is encoded once here, by the publisher, and the same text goes to
every session. Publishing costs one bus round trip and no database access.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from broker_ws.backends import get_backend
from broker_ws.conf import conf
from broker_ws.wire import channel_names, frames

#: Markers a state marker may not take: quotes ``t``, instrument status ``s``,
#: heartbeats ``h``, notifications ``n``, and the account markers of bindings
#: and :func:`broker_ws.push` (``b``, ``o``, ``a``).
RESERVED_MARKERS = frozenset({"t", "s", "h", "n"}) | frames.ACCOUNT_MARKERS

#: A state marker: one to four ASCII letters or digits, a letter first (short on
#: the wire, and readable from a frame's text without JSON unescaping).
_MARKER = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,3}$")

#: Field values: a sequence in the declared order, or a mapping by field name.
Fields = Sequence[Any] | Mapping[str, Any]


def marker_problem(marker: Any) -> str | None:
    """Why ``marker`` cannot be a state marker, if it cannot (for the system check)."""
    if not isinstance(marker, str) or not _MARKER.match(marker):
        return f"state marker {marker!r} must be 1-4 ASCII letters or digits, a letter first"
    if marker in RESERVED_MARKERS:
        return f"state marker {marker!r} is taken (reserved: {', '.join(sorted(RESERVED_MARKERS))})"
    return None


def _state(login: str, marker: str, fields: Fields) -> tuple[str, str, str]:
    """``(login, its channel, the frame)``, or ValueError for what the settings refuse."""
    declared = conf.STATE_MARKERS
    names = declared.get(marker) if isinstance(declared, dict) else None
    if names is None:
        raise ValueError(
            f"state marker {marker!r} is not declared in BROKER_WS['STATE_MARKERS'] "
            f"(declared: {sorted(declared) if isinstance(declared, dict) else []})"
        )
    if isinstance(fields, Mapping):
        if set(fields) != set(names):
            raise ValueError(f"state {marker!r} takes exactly the fields {list(names)}")
        values = [fields[name] for name in names]
    else:
        if isinstance(fields, str | bytes):
            raise TypeError("fields must be a sequence or a mapping of values, not a string")
        values = list(fields)
        if len(values) != len(names):
            raise ValueError(
                f"state {marker!r} takes {len(names)} fields ({', '.join(names)}), "
                f"not {len(values)}"
            )
    login = str(login)
    return login, channel_names.login_channel(login), frames.state(marker, login, values)


def publish_state(login: str, marker: str, fields: Fields) -> None:
    """Send ``[marker, login, null, ...fields]`` to every session of ``login``.

    Args:
        login: the account, as the sessions' tokens list it.
        marker: a key of ``BROKER_WS['STATE_MARKERS']``.
        fields: the declared fields' values, in their declared order (or a
            mapping with exactly those names); encoded as account frames are
            (``Decimal`` keeps its digits).

    No database access, no transaction: the frame is published at once, and
    kept as the login's last state of ``marker`` for the REST snapshot.

    Raises:
        ValueError: ``marker`` is not declared, or the fields do not match its names.
    """
    login, channel, frame = _state(login, marker, fields)
    get_backend().publish_state(channel, login, marker, frame)


async def apublish_state(login: str, marker: str, fields: Fields) -> None:
    """Async :func:`publish_state`."""
    login, channel, frame = _state(login, marker, fields)
    await get_backend().apublish_state(channel, login, marker, frame)
