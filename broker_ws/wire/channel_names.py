"""The one place that turns a symbol, a login or a user into a bus channel name.

Every name starts with the ``KEY_PREFIX`` setting, read through
:data:`prefix` (set by the app's ``ready()``), so this module imports
nothing of Django. Names are valid Channels group names (``^[a-zA-Z0-9\\-_.]+$``, under 100
characters) and are also used as bus channel names, so a quote for a symbol
and the sessions subscribed to it always meet under the same name.

Encoding: the UTF-8 bytes of the value, with ASCII letters, digits and ``-``
kept and every other byte written as ``_XX`` (upper-case hex). ``_`` is
itself escaped, so the mapping is injective and reversible. ``.`` is escaped
too, which keeps it free as the separator between the prefix parts. Values
whose encoding would not fit are hashed (SHA-256) under a distinct kind
letter, so a hashed name can never equal an encoded one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

MAX_CHANNEL_NAME_LENGTH = 99
_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")

QUOTE = "q"
LOGIN = "l"
USER = "u"
EVERYONE = "all"
REVOKED = "revoked"
_HASHED_SUFFIX = "h"

#: ``KEY_PREFIX``'s default, for use before the app is ready.
DEFAULT_PREFIX = "bws"


def _default_prefix() -> str:
    return DEFAULT_PREFIX


#: Gives the prefix of every name; :mod:`broker_ws.apps` points it at the
#: ``KEY_PREFIX`` setting, read at each call so that a changed setting is seen.
prefix: Callable[[], str] = _default_prefix


def encode(value: str) -> str:
    """Encode ``value`` into the group-name alphabet, reversibly."""
    return "".join(chr(b) if b in _KEPT else f"_{b:02X}" for b in value.encode("utf-8"))


def decode(encoded: str) -> str:
    """Invert :func:`encode`."""
    raw = bytearray()
    i = 0
    while i < len(encoded):
        ch = encoded[i]
        if ch == "_":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(ch))
            i += 1
    return raw.decode("utf-8")


def _name(kind: str, value: str) -> str:
    start = prefix()
    name = f"{start}.{kind}.{encode(value)}"
    if len(name) <= MAX_CHANNEL_NAME_LENGTH:
        return name
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
    return f"{start}.{kind}{_HASHED_SUFFIX}.{digest}"


def quote_channel(symbol: str) -> str:
    """Channel of every session subscribed to ``symbol``."""
    return _name(QUOTE, symbol)


def login_channel(login: str) -> str:
    """Channel of every session allowed to see ``login``'s account frames."""
    return _name(LOGIN, login)


def user_channel(user_id: str) -> str:
    """Channel of every session authenticated as one user (for revocation)."""
    return _name(USER, user_id)


def everyone_channel() -> str:
    """Channel of every authenticated session (broadcast notifications)."""
    return f"{prefix()}.{EVERYONE}"


def revocations_channel() -> str:
    """Channel every server process hears revoked user ids on."""
    return f"{prefix()}.{REVOKED}"


def parse_channel(name: str) -> tuple[str, str | None]:
    """Return ``(kind, value)`` for a channel name made here.

    ``value`` is None for hashed names (their value is not recoverable from
    the name alone; whoever subscribed keeps the mapping).
    """
    _prefix, kind, encoded = name.rsplit(".", 2)
    if kind.endswith(_HASHED_SUFFIX) and kind[:-1] in (QUOTE, LOGIN, USER):
        return kind[:-1], None
    return kind, decode(encoded)
