"""The stream as an AsyncAPI 3.0.0 document, as this deployment configures it.

:func:`document` returns the document as plain JSON data (``manage.py
ws_asyncapi`` writes it): the channel (the root path), every client message
(the authorization with ``resume`` and ``epochs``, ``subscribe`` with
``max_rate``, ``unsubscribe``, ``ping``, the deployment's commands by name) and
every server message with a JSON Schema payload: quotes ``t``, statuses ``s``,
heartbeats ``h``, notifications ``n``, the frame layout of each model binding
(``BINDINGS`` and :func:`broker_ws.bind`), each ``STATE_MARKERS`` state frame,
the control replies with every :class:`~broker_ws.wire.protocol.ErrorCode` as
an enum, and the close codes (:class:`~broker_ws.wire.protocol.CloseCode`) in
``x-close-codes``.

The document is deterministic: the same settings and models give the same
text (no timestamps, no host names, keys sorted by :func:`dumps`), so a
deployment can commit it and check that it is up to date. Payload schemas are
the Schema Object of AsyncAPI 3.0.0, a superset of JSON Schema draft 7: array
frames are tuples (``items`` as a list, ``additionalItems: false``), and
``$ref`` points into ``#/components/schemas``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import models

from broker_ws.conf import conf
from broker_ws.publish.bindings import Accessor, Binding, bindings
from broker_ws.session import commands
from broker_ws.wire import frames, protocol
from broker_ws.wire.protocol import RECONNECT, CloseCode, ErrorCode

JSONSchema = dict[str, Any]

#: The statuses of protocol v1.1 itself (broker_ws/publish/statuses.py has them too).
BUILTIN_STATUSES = ("open", "closed", "halted", "close_only")

_SCHEMAS = "#/components/schemas/"
_CHANNEL = "#/channels/stream"
#: What a message key does not hold: letters, digits, "_" and "-" only.
_KEY_CHARS = re.compile(r"[^\w\-]")


def _ref(name: str) -> JSONSchema:
    return {"$ref": _SCHEMAS + name}


def _message_ref(name: str) -> JSONSchema:
    return {"$ref": f"{_CHANNEL}/messages/{name}"}


def _tuple(*items: JSONSchema) -> JSONSchema:
    """A JSON array of exactly these items, in this order."""
    return {
        "type": "array",
        "items": list(items),
        "minItems": len(items),
        "additionalItems": False,
    }


def _marker(marker: str) -> JSONSchema:
    return {"const": marker, "title": "marker"}


def _control(event: str, data: JSONSchema, *, with_id: bool = False) -> JSONSchema:
    """``{"event": event, "data": data}`` (and the request's optional ``id``)."""
    properties: dict[str, Any] = {"event": {"const": event}, "data": data}
    if with_id:
        properties["id"] = _ref("RequestId")
    return {
        "type": "object",
        "properties": properties,
        "required": ["event", "data"],
        "additionalProperties": False,
    }


def _setting(name: str, default: Any) -> Any:
    """A ``BROKER_WS`` setting, or ``default`` where this version has no such setting."""
    try:
        return getattr(conf, name)
    except (AttributeError, KeyError):
        return default


# --- shared schemas ---------------------------------------------------------------


def _symbol_schema() -> JSONSchema:
    declared = conf.SYMBOLS
    schema: JSONSchema = {
        "type": "string",
        "minLength": 1,
        "maxLength": conf.SYMBOL_MAX_LENGTH,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
        "description": "An instrument, named exactly as the server names it (no case "
        "folding, no trimming).",
    }
    if isinstance(declared, list | tuple | set | frozenset):
        schema["enum"] = sorted(str(symbol) for symbol in declared)
    return schema


def _components_schemas() -> dict[str, JSONSchema]:
    login_map = {
        "type": "object",
        "propertyNames": _ref("Login"),
    }
    return {
        "Login": {
            "type": "string",
            "description": "A trading login, always a JSON string.",
        },
        "Seq": {
            "type": "integer",
            "minimum": 1,
            "description": "The frame's number in its login's sequence: the first frame of "
            "a login is 1, each next one 1 more.",
        },
        "TsMs": {"type": "integer", "description": "Epoch milliseconds."},
        "Symbol": _symbol_schema(),
        "RequestId": {
            "description": "A request's id, repeated in its reply.",
            "anyOf": [
                {"type": "string", "maxLength": protocol.MAX_ID_LENGTH},
                {
                    "type": "integer",
                    "minimum": -(2**53 - 1),
                    "maximum": 2**53 - 1,
                },
            ],
        },
        "SeqByLogin": {
            **login_map,
            "additionalProperties": {"type": "integer", "minimum": 0},
            "description": "The last seq of each login (0: none numbered yet).",
        },
        "EpochByLogin": {
            **login_map,
            "additionalProperties": {
                "type": "string",
                "maxLength": getattr(protocol, "MAX_EPOCH_LENGTH", 64),
            },
            "description": "The epoch of each login's numbering: an opaque string that "
            'changes whenever the login\'s counter is reset or restored ("" before its '
            "first numbered frame).",
        },
        "ErrorCode": {
            "type": "string",
            "enum": sorted(code.value for code in ErrorCode),
            "description": "The code of an error reply of the protocol itself "
            "(docs/protocol.md, Error codes).",
        },
        "InstrumentStatus": {
            "type": "string",
            "enum": sorted(_statuses()),
            "description": "open, closed, halted and close_only, and the deployment's "
            "INSTRUMENT_STATUSES.",
        },
    }


def _statuses() -> set[str]:
    try:
        from broker_ws.publish import statuses
    except ImportError:  # a version without instrument statuses
        return set(BUILTIN_STATUSES) | {str(s) for s in _setting("INSTRUMENT_STATUSES", ())}
    return set(statuses.known())


# --- fields of bindings --------------------------------------------------------------


def _model_field(model: type[models.Model], path: str) -> models.Field[Any, Any] | None:
    """The model field an attribute path ends on, following relations, if any."""
    parts = path.split(".")
    field: Any = None
    for position, name in enumerate(parts):
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            return None
        if not isinstance(field, models.Field):
            return None  # a reverse relation
        if position < len(parts) - 1:
            related = field.related_model
            if not field.is_relation or not isinstance(related, type):
                return None
            model = related
    return field if isinstance(field, models.Field) else None


def _field_type(field: models.Field[Any, Any], attname: bool) -> JSONSchema:
    """The JSON type of a field's value on the wire (see frames.dumps)."""
    if field.is_relation and field.related_model is not None:
        related = field.related_model
        if isinstance(related, type) and issubclass(related, models.Model):
            target = getattr(field, "target_field", None) if attname else related._meta.pk
            if isinstance(target, models.Field) and not target.is_relation:
                return _field_type(target, False)
        return {}
    if field.choices:
        values = [json.loads(frames.dumps(value)) for value, _ in field.flatchoices]
        kinds = {type(value) for value in values}
        if kinds == {str}:
            return {"type": "string", "enum": values}
        if kinds == {int}:
            return {"type": "integer", "enum": values}
        return {"enum": values}
    if isinstance(field, models.BooleanField):
        return {"type": "boolean"}
    if isinstance(field, models.DecimalField):
        places = field.decimal_places
        exact = "a decimal with exactly its digits (never through a float)"
        if places is not None:
            exact += f", {places} places"
        return {"type": "number", "description": exact}
    if isinstance(field, models.FloatField):
        return {"type": "number"}
    if isinstance(field, models.IntegerField | models.AutoField):
        return {"type": "integer"}
    if isinstance(field, models.DateTimeField):
        return {"type": "integer", "description": "epoch milliseconds"}
    if isinstance(field, models.DateField):
        return {"type": "string", "format": "date"}
    if isinstance(field, models.UUIDField):
        return {"type": "string", "format": "uuid"}
    if isinstance(field, models.JSONField):
        return {}
    if isinstance(field, models.CharField | models.TextField | models.TimeField):
        return {"type": "string"}
    if isinstance(field, models.DurationField):
        return {"type": "string", "description": "a duration, as Python writes a timedelta"}
    return {}


def _nullable(schema: JSONSchema) -> JSONSchema:
    """``schema`` or null (an untyped schema allows null already)."""
    widened = dict(schema)
    if "enum" in schema:
        widened["enum"] = [*schema["enum"], None]
    kind = schema.get("type")
    if isinstance(kind, str):
        widened["type"] = [kind, "null"]
    return widened


def _accessor_name(accessor: Accessor) -> str:
    if isinstance(accessor, str):
        return accessor
    return getattr(accessor, "__qualname__", None) or type(accessor).__name__


def _field_schema(model: type[models.Model], accessor: Accessor) -> JSONSchema:
    name = _accessor_name(accessor)
    if not isinstance(accessor, str):
        return {"title": name, "description": f"computed by {name}()"}
    field = _model_field(model, accessor)
    if field is None:
        return {"title": name}
    schema = _field_type(field, attname=accessor.split(".")[-1] == field.attname != field.name)
    if field.null:
        schema = _nullable(schema)
    schema["title"] = name
    verbose = str(field.verbose_name)
    if verbose and verbose != name.split(".")[-1].replace("_", " "):
        described = schema.get("description")
        schema["description"] = f"{verbose}: {described}" if described else verbose
    return schema


def _binding_messages(found: Iterable[Binding]) -> dict[str, JSONSchema]:
    """One message per binding, ``frame_<marker>`` (``frame_<marker>_<model>`` when
    several models feed one marker)."""
    ordered = sorted(found, key=lambda b: (b.marker, b.model._meta.label))
    per_marker: dict[str, int] = {}
    for binding in ordered:
        per_marker[binding.marker] = per_marker.get(binding.marker, 0) + 1
    messages: dict[str, JSONSchema] = {}
    for binding in ordered:
        label = binding.model._meta.label
        key = f"frame_{binding.marker}"
        if per_marker[binding.marker] > 1:
            key += "_" + _KEY_CHARS.sub("_", label)
        fields = [_field_schema(binding.model, accessor) for accessor in binding.fields]
        messages[key] = {
            "name": key,
            "title": f"{binding.marker}: {label}",
            "summary": f"Account frame of model {label}, on every committed save.",
            "description": f"`[{json.dumps(binding.marker)}, login, seq, "
            + ", ".join(_accessor_name(a) for a in binding.fields)
            + "]`, sent to every session of the row's login (each login of a row of "
            "several gets its own frame, with its own seq). Numbered: resumed, and "
            "listed by the REST snapshot.",
            "payload": _tuple(_marker(binding.marker), _ref("Login"), _ref("Seq"), *fields),
        }
    return messages


def _state_messages() -> dict[str, JSONSchema]:
    declared = _setting("STATE_MARKERS", {})
    messages: dict[str, JSONSchema] = {}
    if not isinstance(declared, Mapping):
        return messages
    for marker in sorted(declared):
        names = declared[marker]
        if isinstance(names, str) or not isinstance(names, Iterable):
            continue
        names = [str(name) for name in names]
        key = f"state_{_KEY_CHARS.sub('_', str(marker))}"
        messages[key] = {
            "name": key,
            "title": f"{marker}: live state",
            "summary": f"The latest state {marker!r} of a login ({', '.join(names)}).",
            "description": f"`[{json.dumps(str(marker))}, login, null, {', '.join(names)}]` "
            "from publish_state(): no seq, never stored, never replayed by a resume; "
            "conflated per login and marker (a slow session gets the latest) and at most "
            "STATE_MAX_RATE per second; each replaces the previous one.",
            "payload": _tuple(
                _marker(str(marker)),
                _ref("Login"),
                {"type": "null", "title": "seq"},
                *({"title": name} for name in names),
            ),
        }
    return messages


# --- messages --------------------------------------------------------------------------


def _data_messages() -> dict[str, JSONSchema]:
    account_notification = _tuple(
        _marker(frames.NOTIFICATION),
        _ref("Login"),
        _ref("Seq"),
        {"type": "string", "title": "level"},
        {"type": "string", "title": "text"},
        _ref("TsMs"),
    )
    broadcast = _tuple(
        _marker(frames.NOTIFICATION),
        {"type": "null", "title": "login"},
        {"type": "null", "title": "seq"},
        {"type": "string", "title": "level"},
        {"type": "string", "title": "text"},
        _ref("TsMs"),
    )
    return {
        "quote": {
            "name": "quote",
            "title": "t: quote",
            "summary": 'Quote of a subscribed symbol: `["t", symbol, bid, ask, ts_ms]`.',
            "description": "Not numbered, not resumed; the last quote of a symbol is sent "
            "after `subscribed`. A slow session gets the latest per symbol; with "
            "`max_rate`, at most that many per second.",
            "payload": _tuple(
                _marker(frames.QUOTE),
                _ref("Symbol"),
                {"type": "number", "title": "bid"},
                {"type": "number", "title": "ask"},
                _ref("TsMs"),
            ),
        },
        "status": {
            "name": "status",
            "title": "s: instrument status",
            "summary": 'Status of a subscribed symbol: `["s", symbol, status, ts_ms]`.',
            "description": "In order with the symbol's quotes, never conflated away nor "
            "throttled; the last status follows the last quote after `subscribed`.",
            "payload": _tuple(
                _marker("s"),
                _ref("Symbol"),
                _ref("InstrumentStatus"),
                _ref("TsMs"),
            ),
        },
        "heartbeat": {
            "name": "heartbeat",
            "title": "h: heartbeat",
            "summary": 'Sent when nothing else was: `["h", ts_ms, {"<login>": <seq>}]`.',
            "description": "Sent to an authorized session to which nothing was sent for "
            f"HEARTBEAT_INTERVAL ({_setting('HEARTBEAT_INTERVAL', 15.0)} s here; 0: never); "
            "each login's seq of the last frame this server delivered to the session. "
            "A seq above your last seen one means you missed a frame.",
            "payload": _tuple(
                _marker("h"),
                _ref("TsMs"),
                _ref("SeqByLogin"),
            ),
        },
        "notification": {
            "name": "notification",
            "title": "n: notification",
            "summary": "A notification to a login (numbered) or to every session.",
            "description": '`["n", login, seq, level, text, ts_ms]`, or '
            '`["n", null, null, level, text, ts_ms]` for a broadcast (not resumed).',
            "payload": {"oneOf": [account_notification, broadcast]},
        },
    }


def _reply_messages() -> dict[str, JSONSchema]:
    symbols = {"type": "array", "items": _ref("Symbol")}
    error_data: JSONSchema = {
        "type": "object",
        "properties": {
            "code": _ref("ErrorCode"),
            "message": {"type": "string", "description": "For humans; may change."},
            "symbols": {"type": "array", "items": {"type": "string"}},
            "logins": {"type": "array", "items": _ref("Login")},
            "event": {"type": "string", "maxLength": protocol.MAX_ID_LENGTH},
        },
        "required": ["code", "message"],
    }
    command_error_data: JSONSchema = {
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "pattern": f"^{commands.CODE.pattern}$",
                "not": _ref("ErrorCode"),
            },
            "message": {"type": "string"},
            "event": {"type": "string", "enum": _command_names()},
        },
        "required": ["code", "message", "event"],
    }
    authorized_data: JSONSchema = {
        "type": "object",
        "properties": {
            "user": {"type": "string"},
            "logins": {"type": "array", "items": _ref("Login")},
            "expires": {
                "type": "integer",
                "description": "The token's expiry, epoch ms (a multiple of 1000).",
            },
            "seq": _ref("SeqByLogin"),
            "epoch": _ref("EpochByLogin"),
            "protocol": {"const": getattr(protocol, "PROTOCOL_VERSION", "1.1")},
        },
        "required": ["user", "logins", "expires", "seq", "epoch", "protocol"],
        "additionalProperties": False,
    }
    messages: dict[str, JSONSchema] = {
        "authorized": {
            "name": "authorized",
            "title": "authorized",
            "summary": "The answer to an accepted authorization (and to a refresh).",
            "payload": _control("authorized", authorized_data),
        },
        "resync": {
            "name": "resync",
            "title": "resync",
            "summary": "After `authorized`: logins to reconcile over REST, with the seq to "
            "continue from (the history did not reach back, or the epoch changed).",
            "payload": _control("resync", {**_ref("SeqByLogin"), "minProperties": 1}),
        },
        "subscribed": {
            "name": "subscribed",
            "title": "subscribed",
            "summary": "The symbols of the request the session is now subscribed to.",
            "payload": _control("subscribed", symbols),
        },
        "unsubscribed": {
            "name": "unsubscribed",
            "title": "unsubscribed",
            "summary": "The requested symbols, without duplicates.",
            "payload": _control("unsubscribed", {"type": "array", "items": {"type": "string"}}),
        },
        "reconnect": {
            "name": "reconnect",
            "title": "reconnect",
            "summary": "The server process is shutting down: reconnect, with resume, at a "
            "random moment within `within_ms`; close 4009 follows.",
            "payload": _control(
                "reconnect",
                {
                    "type": "object",
                    "properties": {"within_ms": {"type": "integer", "minimum": 0}},
                    "required": ["within_ms"],
                    "additionalProperties": False,
                },
            ),
        },
        "pong": {
            "name": "pong",
            "title": "pong",
            "summary": "The answer to `ping`: plain text, not JSON.",
            "contentType": "text/plain",
            "payload": {"type": "string", "const": protocol.PONG},
        },
        "error": {
            "name": "error",
            "title": "error",
            "summary": "A message was refused; unless its code closes the session "
            "(see x-close-codes), the session stays open.",
            "description": "`id` repeats a command's request id. Extra fields: `symbols` "
            "(invalid_symbols, too_many_subscriptions), `logins` (too_many_sessions), "
            "`event` (answers to a command).",
            "payload": _control("error", error_data, with_id=True),
        },
    }
    if command_error_data["properties"]["event"]["enum"]:
        messages["command_error"] = {
            "name": "command_error",
            "title": "error (a command's own code)",
            "summary": "A command of the deployment refused the request with a code of "
            "its own (its contract), plus the handler's own fields.",
            "payload": _control("error", command_error_data, with_id=True),
        }
    return messages


def _command_names() -> list[str]:
    names = set(commands.registered())
    declared = conf.COMMANDS
    if isinstance(declared, Mapping):
        names.update(name for name in declared if isinstance(name, str))
    return sorted(
        name
        for name in names
        if commands.name_problem(name) is None and commands.handler_for(name) is not None
    )


def _command_messages() -> tuple[dict[str, JSONSchema], dict[str, JSONSchema]]:
    """(requests, replies) of the deployment's commands."""
    requests: dict[str, JSONSchema] = {}
    replies: dict[str, JSONSchema] = {}
    for name in _command_names():
        key = _KEY_CHARS.sub("_", name)
        requests[f"command_{key}"] = {
            "name": f"command_{key}",
            "title": name,
            "summary": f"The deployment's command {name!r}; `data` is its own contract.",
            "payload": {
                "type": "object",
                "properties": {
                    "event": {"const": name},
                    "id": _ref("RequestId"),
                    "data": {"description": "Any JSON; absent means null."},
                },
                "required": ["event"],
            },
        }
        replies[f"reply_{key}"] = {
            "name": f"reply_{key}",
            "title": f"{name} (reply)",
            "summary": f"The result of command {name!r}, with the request's id.",
            "payload": _control(name, {"description": "The command's reply."}, with_id=True),
        }
    return requests, replies


def _client_messages() -> dict[str, JSONSchema]:
    return {
        "ping": {
            "name": "ping",
            "title": "ping",
            "summary": "Plain text `ping` (exactly), answered `pong`; allowed at any time.",
            "contentType": "text/plain",
            "payload": {"type": "string", "const": protocol.PING},
        },
        "authorization": {
            "name": "authorization",
            "title": "authorization",
            "summary": "The first message (within AUTH_TIMEOUT), and later an in-band "
            "token refresh.",
            "payload": {
                "type": "object",
                "properties": {
                    "authorization": {"type": "string", "minLength": 1},
                    "resume": {
                        **_ref("SeqByLogin"),
                        "description": "The last seq seen of each login.",
                    },
                    "epochs": {
                        **_ref("EpochByLogin"),
                        "description": "The epoch of each resumed login (from the "
                        "previous authorized); a login whose epoch differs gets resync.",
                    },
                },
                "required": ["authorization"],
            },
        },
        "subscribe": {
            "name": "subscribe",
            "title": "subscribe",
            "summary": "Subscribe to the quotes and statuses of symbols "
            f"(at most {conf.MAX_SUBSCRIPTIONS} per session).",
            "payload": {
                "type": "object",
                "properties": {
                    "event": {"const": "subscribe"},
                    "data": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "max_rate": {
                        "type": ["number", "null"],
                        "minimum": getattr(protocol, "MIN_RATE", 0.1),
                        "maximum": getattr(protocol, "MAX_RATE", 20),
                        "description": "At most this many quotes per second of each of "
                        "these symbols, the latest one (absent or null: every quote); "
                        "statuses are never throttled.",
                    },
                },
                "required": ["event", "data"],
            },
        },
        "unsubscribe": {
            "name": "unsubscribe",
            "title": "unsubscribe",
            "summary": "Stop the quotes and statuses of symbols.",
            "payload": {
                "type": "object",
                "properties": {
                    "event": {"const": "unsubscribe"},
                    "data": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                },
                "required": ["event", "data"],
            },
        },
    }


# --- the document --------------------------------------------------------------------


def _close_codes() -> list[dict[str, Any]]:
    return [
        {"code": int(code), "name": code.name, "reconnect": RECONNECT.get(code, "")}
        for code in sorted(CloseCode)
    ]


def _limits() -> dict[str, Any]:
    names = (
        "AUTH_TIMEOUT",
        "DRAIN_WINDOW",
        "HEARTBEAT_INTERVAL",
        "HISTORY_SIZE",
        "MAX_MESSAGE_BYTES",
        "MAX_MESSAGES_PER_SECOND",
        "MAX_PENDING_COMMANDS",
        "MAX_SESSIONS_PER_LOGIN",
        "MAX_SUBSCRIPTIONS",
        "STATE_MAX_RATE",
        "SYMBOL_MAX_LENGTH",
    )
    found = {name: _setting(name, None) for name in names}
    return {name: value for name, value in found.items() if value is not None}


def _description(close_codes: list[dict[str, Any]]) -> str:
    rows = "\n".join(
        f"| {row['code']} | `{row['name']}` | {row['reconnect']} |" for row in close_codes
    )
    return (
        "Real-time stream of quotes and account updates (broker_ws, protocol "
        f"{getattr(protocol, 'PROTOCOL_VERSION', '1.1')}). One WebSocket at the root path "
        "`/`; text frames only: control replies are JSON objects, data frames JSON "
        "arrays with their marker first, and `ping`/`pong` plain text. A client ignores "
        "unknown markers, unknown events, unknown fields and extra trailing array items. "
        "The reference is docs/protocol.md; this document is generated by "
        "`manage.py ws_asyncapi` from the deployment's settings.\n\n"
        "Close codes (also in `x-close-codes`):\n\n"
        "| code | name | reconnect? |\n|---|---|---|\n" + rows + "\n"
    )


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of this deployment's stream, as JSON data."""
    version = getattr(protocol, "PROTOCOL_VERSION", "1.1")
    close_codes = _close_codes()
    client = _client_messages()
    requests, replies = _command_messages()
    client.update(requests)
    data = {**_data_messages(), **_binding_messages(bindings().values()), **_state_messages()}
    control = {**_reply_messages(), **replies}
    messages = {**client, **data, **control}
    subprotocol = getattr(protocol, "SUBPROTOCOL", "broker-ws.v1")

    def receive(name: str, summary: str, answers: list[str]) -> dict[str, Any]:
        return {
            "action": "receive",
            "channel": {"$ref": _CHANNEL},
            "summary": summary,
            "messages": [_message_ref(name)],
            "reply": {
                "channel": {"$ref": _CHANNEL},
                "messages": [_message_ref(answer) for answer in answers],
            },
        }

    operations: dict[str, Any] = {
        "ping": receive("ping", "Liveness check.", ["pong"]),
        "authorize": receive(
            "authorization",
            "Authorize the session (resume, epochs), or refresh its token.",
            ["authorized", "resync", "error"],
        ),
        "subscribe": receive(
            "subscribe",
            "Subscribe: subscribed, then errors for refused symbols, then the last quote "
            "and last status of each newly subscribed symbol.",
            ["subscribed", "error", "quote", "status"],
        ),
        "unsubscribe": receive("unsubscribe", "Unsubscribe.", ["unsubscribed", "error"]),
    }
    for key in requests:
        name = key.removeprefix("command_")
        operations[key] = receive(
            key,
            f"The deployment's command {messages[key]['title']!r}.",
            [f"reply_{name}", "error", "command_error"],
        )
    operations["stream"] = {
        "action": "send",
        "channel": {"$ref": _CHANNEL},
        "summary": "What the server sends without being asked: quotes and statuses of "
        "subscribed symbols, account and state frames of the session's logins, "
        "notifications, heartbeats, and the drain notice.",
        "messages": [_message_ref(name) for name in sorted(data)] + [_message_ref("reconnect")],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "broker_ws stream",
            "version": version,
            "description": _description(close_codes),
        },
        "defaultContentType": "application/json",
        "servers": {
            "stream": {
                "host": "{host}",
                "pathname": "/",
                "protocol": "ws",
                "description": f"Offer the WebSocket subprotocol `{subprotocol}` (echoed), "
                "or none; a handshake offering only others is refused. wss:// behind TLS.",
                "variables": {
                    "host": {
                        "default": "127.0.0.1:8000",
                        "description": "The deployment's host and port.",
                    }
                },
            }
        },
        "channels": {
            "stream": {
                "address": "/",
                "title": "The stream",
                "description": "The only path served; a query string is ignored. An "
                "authorized session receives its logins' frames without subscribing.",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "x-close-codes": close_codes,
                "x-limits": _limits(),
                "x-subprotocol": subprotocol,
            }
        },
        "operations": operations,
        "components": {"schemas": _components_schemas(), "messages": messages},
    }


def dumps(value: Mapping[str, Any]) -> str:
    """The document's text: JSON, keys sorted, two-space indent, a final newline."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
