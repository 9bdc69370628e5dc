"""Pure functions from data to encoded protocol v1 frames.

Data frames are compact JSON arrays, marker first; control replies are JSON
objects. Every frame is encoded once here, by the publisher, and the same
text is then written to every session: nothing downstream re-encodes.

Values are normalised for the wire: ``Decimal`` becomes a JSON number with
exactly its digits (never through float), datetimes become epoch
milliseconds, and anything else orjson cannot encode becomes its ``str``.
"""

from __future__ import annotations

import datetime as dt
import enum
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

QUOTE = "t"
STATUS = "s"
BALANCE = "b"
TRADE = "o"
ALERT = "a"
NOTIFICATION = "n"
ACCOUNT_MARKERS = frozenset({BALANCE, TRADE, ALERT})

#: An account frame split around its seq: ``(head, tail)``.
FrameParts = tuple[str, str]


def now_ms() -> int:
    """Current time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def to_epoch_ms(value: dt.datetime | int | float | None) -> int:
    """Normalise a timestamp (aware datetime, epoch ms, or None for now)."""
    if value is None:
        return now_ms()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    return int(value)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return orjson.Fragment(format(value, "f"))
    if isinstance(value, dt.datetime):
        return to_epoch_ms(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def dumps(value: Any) -> bytes:
    """orjson with the wire normalisation of this module.

    datetimes go through ``_default`` too (OPT_PASSTHROUGH_DATETIME) so they
    become epoch milliseconds like every ``ts_ms`` of the protocol.
    """
    return orjson.dumps(value, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


def quote(symbol: str, bid: float, ask: float, ts_ms: int) -> str:
    """``["t", symbol, bid, ask, ts_ms]``."""
    return orjson.dumps([QUOTE, symbol, bid, ask, ts_ms]).decode()


def status(symbol: str, status: str, ts_ms: int) -> str:
    """``["s", symbol, status, ts_ms]``: an instrument status (travels with the quotes)."""
    return orjson.dumps([STATUS, symbol, status, ts_ms]).decode()


def is_status(frame: str) -> bool:
    """Whether a payload of a symbol's quote channel is a status frame (not a quote)."""
    return frame.startswith('["s",')


def account_parts(marker: str, login: str, fields: Sequence[Any]) -> FrameParts:
    """Split ``[marker, login, seq, ...fields]`` around the seq.

    The sequence number is only known when the outbox numbers the frame (in
    the database, in the publisher's transaction: :mod:`broker_ws.outbox.store`),
    so the publisher encodes everything else once and the store splices the
    number in.
    """
    head = dumps([marker, login]).decode()[:-1] + ","
    body = dumps(list(fields)).decode()
    tail = "]" if body == "[]" else "," + body[1:]
    return head, tail


def join_account(head: str, seq: int, tail: str) -> str:
    """The full account frame for one sequence number."""
    return f"{head}{seq}{tail}"


def notification_parts(level: str, text: str, ts_ms: int, login: str | None) -> FrameParts:
    """``["n", login, seq, level, text, ts_ms]`` split around the seq."""
    head = dumps([NOTIFICATION, login]).decode()[:-1] + ","
    tail = "," + dumps([level, text, ts_ms]).decode()[1:]
    return head, tail


def broadcast_notification(level: str, text: str, ts_ms: int) -> str:
    """``["n", null, null, level, text, ts_ms]``: to every session."""
    return dumps([NOTIFICATION, None, None, level, text, ts_ms]).decode()


def state(marker: str, login: str, fields: Sequence[Any]) -> str:
    """``[marker, login, null, ...fields]``: a login's live state (no seq: never stored).

    ``marker`` is a declared ``STATE_MARKERS`` key: ASCII letters and digits only
    (the system check holds it to that), so its JSON form needs no escape and
    :func:`broker_ws.wire.messages.state_marker` can read it back from the text.
    """
    return dumps([marker, login, None, *fields]).decode()


def control(event: str, data: Any) -> str:
    """A control reply: ``{"event": ..., "data": ...}``."""
    return dumps({"event": event, "data": data}).decode()


def error(code: str, message: str, **extra: Any) -> str:
    """``{"event":"error","data":{"code":...,"message":...}}`` plus extras."""
    return control("error", {"code": code, "message": message, **extra})


def authorized(
    user: str,
    logins: Iterable[str],
    expires_ms: int,
    seq: Mapping[str, int],
    epoch: Mapping[str, str],
    protocol: str,
) -> str:
    """The reply to a successful ``authorization`` message."""
    return control(
        "authorized",
        {
            "user": user,
            "logins": list(logins),
            "expires": expires_ms,
            "seq": dict(seq),
            "epoch": dict(epoch),
            "protocol": protocol,
        },
    )


def heartbeat(ts_ms: int, seq: Mapping[str, int]) -> str:
    """``["h", ts_ms, {"<login>": <seq>, ...}]``: the session is alive, and the last
    seq of each of its logins the server has sent it."""
    return dumps(["h", ts_ms, seq]).decode()
