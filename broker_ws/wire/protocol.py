"""Protocol v1 constants and the parser of client messages.

Every client message is hostile until parsed here into one of the command
types below; anything that does not parse becomes a :class:`ProtocolError`
with a machine-readable code, which the consumer turns into an ``error``
reply while the session stays open. See ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import orjson

from broker_ws.exceptions import ProtocolError

PING = "ping"
PONG = "pong"

#: The protocol revision ``authorized.data.protocol`` announces. Minor revisions
#: only add (markers, events, fields) that a client of an earlier one ignores.
PROTOCOL_VERSION = "1.1"
#: The WebSocket subprotocol a client may offer to ask for protocol v1 explicitly.
SUBPROTOCOL = "broker-ws.v1"


class CloseCode(enum.IntEnum):
    """WebSocket close codes sent by the server, one per reason.

    Whether a client should reconnect is in :data:`RECONNECT` and in
    ``docs/protocol.md``.
    """

    AUTH_FAILED = 4001
    AUTH_TIMEOUT = 4002
    TOKEN_EXPIRED = 4003
    REVOKED = 4004
    TOO_SLOW = 4005
    RATE_LIMITED = 4006
    TOO_MANY_SESSIONS = 4007
    UNAVAILABLE = 4008
    RESTARTING = 4009


#: Whether a client should reconnect after each close code (and how).
RECONNECT: dict[CloseCode, str] = {
    CloseCode.AUTH_FAILED: "no: the token is not acceptable; obtain a new one first",
    CloseCode.AUTH_TIMEOUT: "yes: send the authorization message promptly",
    CloseCode.TOKEN_EXPIRED: "yes, with a refreshed access token",
    CloseCode.REVOKED: "no: the user's access was revoked",
    CloseCode.TOO_SLOW: "yes, then reconcile account state over REST",
    CloseCode.RATE_LIMITED: "yes, after a back-off",
    CloseCode.TOO_MANY_SESSIONS: "no: close another session of this login first",
    CloseCode.UNAVAILABLE: "yes, after a back-off, with resume: a dependency of the server failed",
    CloseCode.RESTARTING: "yes, at once (within the notice's within_ms), with resume",
}


class ErrorCode(enum.StrEnum):
    """``code`` values of ``error`` replies."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_EVENT = "unknown_event"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    MESSAGE_TOO_LARGE = "message_too_large"
    NOT_AUTHORIZED = "not_authorized"
    AUTH_FAILED = "auth_failed"
    USER_MISMATCH = "user_mismatch"
    INVALID_SYMBOLS = "invalid_symbols"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    INTERNAL_ERROR = "internal_error"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_SESSIONS = "too_many_sessions"
    REVOKED = "revoked"
    UNAVAILABLE = "unavailable"
    TOO_MANY_PENDING = "too_many_pending"


@dataclass(frozen=True, slots=True)
class Authorize:
    """``{"authorization": "<JWT>", "resume": {"<login>": <last seq seen>},
    "epochs": {"<login>": "<epoch>"}}``.

    ``resume`` is optional: the frames missed since a previous session.
    ``epochs`` is optional: the epoch of each login's numbering that the
    resumed seqs belong to (from the previous ``authorized``).
    ``token`` is empty when the message carried no usable token (not a
    string, or empty): that is refused like a bad token, not a bad message.
    """

    token: str
    resume: dict[str, int] | None = None
    epochs: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``{"event": "subscribe", "data": [symbols], "max_rate": R}``.

    ``max_rate`` is optional (absent or null: every quote): at most R quotes per
    second of each of these symbols, the latest one. It is kept as
    ``interval_ms``, the time between two quotes: ``1000 / R`` rounded **up** to a
    multiple of :data:`RATE_STEP_MS`, so the rate a session gets never exceeds R,
    and a symbol has at most ``MAX_INTERVAL_MS / RATE_STEP_MS`` (200) throttle
    groups in a process. R must be a number from :data:`MIN_RATE` to
    :data:`MAX_RATE` (0.1 to 20 quotes/s); anything else is a ``bad_message``.
    """

    symbols: tuple[str, ...]
    interval_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``{"event": "unsubscribe", "data": [symbols]}``."""

    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Request:
    """``{"event": "<name>", "id": <id>, "data": <any JSON>}``: any other event, for
    one of the host's commands (:mod:`broker_ws.session.commands`).

    ``id`` is optional, a string of at most :data:`MAX_ID_LENGTH` characters or
    an integer; the reply repeats it. ``data`` is None when absent.
    """

    event: str
    data: Any = None
    id: str | int | None = None


#: Longest request ``id`` string (and event name) accepted.
MAX_ID_LENGTH = 64
#: Integers a JSON client can hold exactly (JavaScript's safe range).
_SAFE_INTEGER = 2**53 - 1

Command = Authorize | Subscribe | Unsubscribe | Request


def parse(text: str) -> Command:
    """Parse one client text frame (other than ``ping``) into a command."""
    try:
        message: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, "message is not valid JSON") from exc
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message must be a JSON object")
    if "authorization" in message:
        token = message["authorization"]
        if not isinstance(token, str) or not token:
            return Authorize("")
        return Authorize(token, _resume(message.get("resume")), _epochs(message.get("epochs")))
    event = message.get("event")
    if event in ("subscribe", "unsubscribe"):
        symbols = _symbol_list(message.get("data"))
        if event == "unsubscribe":
            return Unsubscribe(symbols)
        return Subscribe(symbols, _interval_ms(message.get("max_rate")))
    if not isinstance(event, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message needs an 'event' or 'authorization'")
    # Whether the host has a command of that name is the session's to say.
    return Request(event, message.get("data"), _request_id(message.get("id")))


def _request_id(value: Any) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= MAX_ID_LENGTH:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _SAFE_INTEGER:
        return value
    raise ProtocolError(
        ErrorCode.BAD_MESSAGE,
        f"id must be a string of at most {MAX_ID_LENGTH} characters or an integer",
    )


def _resume(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 for seq in value.values()
    ):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "resume must map logins to the last seq seen (integers >= 0)"
        )
    return value


#: Longest epoch string accepted from a client (the server's are 16 characters).
MAX_EPOCH_LENGTH = 64


def _epochs(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(epoch, str) and len(epoch) <= MAX_EPOCH_LENGTH for epoch in value.values()
    ):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"epochs must map logins to epoch strings of at most {MAX_EPOCH_LENGTH} characters",
        )
    return value


#: Bounds of a subscribe's ``max_rate`` (quotes per second per symbol).
MIN_RATE = 0.1
MAX_RATE = 20
#: A throttled subscription's interval is a multiple of this many ms.
RATE_STEP_MS = 50
#: The longest interval (that of :data:`MIN_RATE`).
MAX_INTERVAL_MS = 10_000


def _interval_ms(max_rate: Any) -> int | None:
    """The interval of a subscribe's ``max_rate`` (None: unthrottled); see
    :class:`Subscribe`."""
    if max_rate is None:
        return None
    if (
        isinstance(max_rate, bool)
        or not isinstance(max_rate, int | float)
        or not MIN_RATE <= max_rate <= MAX_RATE  # also refuses NaN
    ):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"max_rate must be a number of quotes per second from {MIN_RATE} to {MAX_RATE}",
        )
    steps = math.ceil(1000 / max_rate / RATE_STEP_MS - 1e-9)  # rounding noise is no step
    return max(steps, 1) * RATE_STEP_MS


def _symbol_list(data: Any) -> tuple[str, ...]:
    if not isinstance(data, list) or not data:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "data must be a non-empty list of symbols")
    if not all(isinstance(item, str) for item in data):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "every symbol must be a string")
    # dict.fromkeys: de-duplicate, keep the client's order.
    return tuple(dict.fromkeys(data))
