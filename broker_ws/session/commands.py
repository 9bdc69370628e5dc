"""Client commands of the host's own: placing an order, acknowledging a notice.

A host registers a handler for an event name, in code (:func:`command`) or in
``BROKER_WS["COMMANDS"]``. A client then sends
``{"event": "<name>", "id": <id>, "data": <any JSON>}`` on an authorized
session, and the handler is called with the session's
:class:`~broker_ws.auth.identity.Identity` and ``data``. What it returns is
the reply's data, ``{"event": "<name>", "id": <id>, "data": <returned>}``; a
:class:`~broker_ws.exceptions.CommandError` it raises is an ``error`` reply
with its code. Anything else it raises is logged and answered
``internal_error``, a database error ``unavailable``; the session stays open
either way. ``docs/protocol.md`` (Commands) is the wire contract.

Handlers are the host's code and trust nothing from the client: ``data`` is
whatever JSON the client sent, and a handler acting on a login must check it
is one of ``identity.logins``. Async handlers run on the server's event loop;
sync ones in Django's database thread (``database_sync_to_async``), one at a
time per process like every database read of broker_ws, so a sync handler
must be quick or be written async.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.db import Error as DatabaseError
from django.utils.module_loading import import_string

from broker_ws.auth.identity import Identity
from broker_ws.conf import conf
from broker_ws.exceptions import CommandError, ConfigurationError, Unavailable
from broker_ws.wire import frames
from broker_ws.wire.protocol import MAX_ID_LENGTH, ErrorCode, Request

logger = logging.getLogger(__name__)

Handler = Callable[[Identity, Any], Any]

#: Event names of protocol v1 itself, client's and server's: never a host command.
RESERVED = frozenset(
    {
        "authorization",
        "authorized",
        "subscribe",
        "subscribed",
        "unsubscribe",
        "unsubscribed",
        "error",
        "resync",
        "reconnect",
        "ping",
        "pong",
    }
)
#: What a command name looks like: short, lower case, no spaces.
NAME = re.compile(rf"[a-z][a-z0-9_.:-]{{0,{MAX_ID_LENGTH - 1}}}")
#: What an error code of a handler looks like.
CODE = re.compile(rf"[a-z][a-z0-9_]{{0,{MAX_ID_LENGTH - 1}}}")

_registry: dict[str, Handler] = {}


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a command's event name, if it cannot."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return f"{name!r} is not a command name (lower case [a-z0-9_.:-], at most 64 characters)"
    if name in RESERVED:
        return f"{name!r} is an event of the protocol itself"
    return None


def command(name: str, handler: Handler | None = None) -> Any:
    """Register ``handler`` for client messages ``{"event": name, ...}``.

    As a decorator, ``@broker_ws.command("place_order")``, or called with the
    handler. A later registration of the same name replaces the earlier one
    (also one from ``BROKER_WS["COMMANDS"]``). Returns the handler.
    """
    problem = name_problem(name)
    if problem:
        raise ConfigurationError(problem)

    def register(function: Handler) -> Handler:
        if not callable(function):
            raise ConfigurationError(f"the handler of {name!r} is not callable")
        _registry[name] = function
        return function

    return register if handler is None else register(handler)


def unregister(name: str) -> None:
    """Forget the handler registered in code for ``name``."""
    _registry.pop(name, None)


def registered() -> list[str]:
    """The names registered in code (:func:`command`), besides ``BROKER_WS["COMMANDS"]``."""
    return sorted(_registry)


def handler_for(name: str) -> Handler | None:
    """The handler of ``name``: registered in code, else from the setting."""
    handler = _registry.get(name)
    if handler is not None:
        return handler
    declared = conf.COMMANDS
    target = declared.get(name) if isinstance(declared, dict) and name not in RESERVED else None
    if isinstance(target, str):
        try:
            target = import_string(target)
        except ImportError:
            logger.error("broker_ws: COMMANDS[%r] = %r cannot be imported", name, target)
            return None
    return target if callable(target) else None


async def answer(request: Request, identity: Identity, handler: Handler) -> str:
    """Run ``handler`` (:func:`handler_for` the request's event) on ``request`` and
    return the reply frame, whatever happens."""
    try:
        if inspect.iscoroutinefunction(handler):
            result = await handler(identity, request.data)
        else:
            result = await database_sync_to_async(handler)(identity, request.data)
            if inspect.isawaitable(result):  # a sync callable that returned a coroutine
                result = await result
    except CommandError as exc:
        if not isinstance(exc.code, str) or not CODE.fullmatch(exc.code):
            logger.error("broker_ws: command %r raised an invalid code %r", request.event, exc.code)
            return reply_error(request, ErrorCode.INTERNAL_ERROR, "the command failed")
        return reply_error(request, exc.code, str(exc.message), **exc.extra)
    except (DatabaseError, Unavailable) as exc:
        logger.warning("broker_ws: command %r failed on a dependency (%s)", request.event, exc)
        return reply_error(
            request, ErrorCode.UNAVAILABLE, "the server is temporarily unavailable; retry later"
        )
    except Exception:
        logger.exception("broker_ws: command %r failed", request.event)
        return reply_error(request, ErrorCode.INTERNAL_ERROR, "the command failed")
    return reply(request, result)


def reply(request: Request, data: Any) -> str:
    """``{"event": <name>, "id": <id>, "data": <data>}`` (no ``id`` if the request had none)."""
    message: dict[str, Any] = {"event": request.event}
    if request.id is not None:
        message["id"] = request.id
    message["data"] = data
    return frames.dumps(message).decode()


def reply_error(request: Request, code: str, message: str, **extra: Any) -> str:
    """``{"event": "error", "id": <id>, "data": {"code", "message", "event", ...}}``.

    The extras of a handler cannot replace ``code``, ``message`` or ``event``.
    """
    data = {**extra, "code": code, "message": message, "event": request.event[:MAX_ID_LENGTH]}
    error: dict[str, Any] = {"event": "error"}
    if request.id is not None:
        error["id"] = request.id
    error["data"] = data
    return frames.dumps(error).decode()
