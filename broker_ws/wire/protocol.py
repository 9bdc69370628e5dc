"""Protocol v1 constants and the parser of client messages.

Every client message is hostile until parsed here into one of the command
types below; anything that does not parse becomes a :class:`ProtocolError`
with a machine-readable code, which the consumer turns into an ``error``
reply while the session stays open. See ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson

from broker_ws.exceptions import ProtocolError

PING = "ping"
PONG = "pong"


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
    """``{"authorization": "<JWT>", "resume": {"<login>": <last seq seen>}}``.

    ``resume`` is optional: the frames missed since a previous session.
    ``token`` is empty when the message carried no usable token (not a
    string, or empty): that is refused like a bad token, not a bad message.
    """

    token: str
    resume: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``{"event": "subscribe", "data": [symbols]}``."""

    symbols: tuple[str, ...]


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
        return Authorize(token, _resume(message.get("resume")))
    event = message.get("event")
    if event in ("subscribe", "unsubscribe"):
        symbols = _symbol_list(message.get("data"))
        return Subscribe(symbols) if event == "subscribe" else Unsubscribe(symbols)
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


def _symbol_list(data: Any) -> tuple[str, ...]:
    if not isinstance(data, list) or not data:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "data must be a non-empty list of symbols")
    if not all(isinstance(item, str) for item in data):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "every symbol must be a string")
    # dict.fromkeys: de-duplicate, keep the client's order.
    return tuple(dict.fromkeys(data))
