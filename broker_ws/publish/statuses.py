"""The instrument statuses a ``["s", symbol, status, ts_ms]`` frame may carry.

Protocol v1.1 defines four (:data:`BUILTIN`); a host adds names of its own in
``BROKER_WS["INSTRUMENT_STATUSES"]`` (short lower-case identifiers, see
:data:`NAME`; the system check ``broker_ws.E015`` holds them to that). The set is
read from the settings on every call, so ``override_settings`` works.
"""

from __future__ import annotations

import re
from typing import Any

from broker_ws.conf import conf

#: Trading as usual.
OPEN = "open"
#: Outside trading hours.
CLOSED = "closed"
#: Trading suspended (news, a circuit breaker, the dealing desk).
HALTED = "halted"
#: Positions may be closed, none opened.
CLOSE_ONLY = "close_only"
#: The statuses of protocol v1.1 itself.
BUILTIN = frozenset({OPEN, CLOSED, HALTED, CLOSE_ONLY})
#: What a host's status name looks like: lower case, at most 32 characters.
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be an instrument status, if it cannot."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return f"{name!r} is not a status name ([a-z][a-z0-9_]*, at most 32 characters)"
    return None


def known() -> frozenset[str]:
    """Every status this deployment publishes: :data:`BUILTIN` plus the host's."""
    extra = conf.INSTRUMENT_STATUSES
    if not extra:
        return BUILTIN
    return BUILTIN | frozenset(name for name in extra if name_problem(name) is None)


def validate(status: Any) -> str:
    """Return ``status`` if it is :func:`known`; raise ValueError (TypeError for a
    non-string) otherwise."""
    if not isinstance(status, str):
        raise TypeError(f"status must be a string, not {type(status).__name__}")
    statuses = known()
    if status not in statuses:
        raise ValueError(f"status must be one of {sorted(statuses)}, not {status!r}")
    return status
