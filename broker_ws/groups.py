"""The one place that turns a symbol or a login into a group name.

Names are valid Channels group names (``^[a-zA-Z0-9\\-_.]+$``, under 100
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

from broker_ws.conf import conf

MAX_GROUP_NAME_LENGTH = 99
_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")

QUOTE = "q"
LOGIN = "l"
USER = "u"
EVERYONE = "all"
REVOKED = "revoked"
_HASHED_SUFFIX = "h"


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
    prefix = conf.KEY_PREFIX
    name = f"{prefix}.{kind}.{encode(value)}"
    if len(name) <= MAX_GROUP_NAME_LENGTH:
        return name
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
    return f"{prefix}.{kind}{_HASHED_SUFFIX}.{digest}"


def quote_group(symbol: str) -> str:
    """Group of every session subscribed to ``symbol``."""
    return _name(QUOTE, symbol)


def login_group(login: str) -> str:
    """Group of every session allowed to see ``login``'s account frames."""
    return _name(LOGIN, login)


def user_group(user_id: str) -> str:
    """Group of every session authenticated as one user (for revocation)."""
    return _name(USER, user_id)


def everyone_group() -> str:
    """Group of every authenticated session (broadcast notifications)."""
    return f"{conf.KEY_PREFIX}.{EVERYONE}"


def revocations_group() -> str:
    """Channel every server process hears revoked user ids on."""
    return f"{conf.KEY_PREFIX}.{REVOKED}"


def parse_group(name: str) -> tuple[str, str | None]:
    """Return ``(kind, value)`` for a group name made here.

    ``value`` is None for hashed names (their value is not recoverable from
    the name alone; whoever subscribed keeps the mapping).
    """
    _prefix, kind, encoded = name.rsplit(".", 2)
    if kind.endswith(_HASHED_SUFFIX) and kind[:-1] in (QUOTE, LOGIN, USER):
        return kind[:-1], None
    return kind, decode(encoded)
