"""broker_ws: a real-time WebSocket stream for Django broker backends.

The public API, importable from here without touching the database or the
settings at import time::

    publish_quote / apublish_quote   one quote to every subscriber of a symbol
    publish_status / apublish_status an instrument status (open, halted, ...) likewise
    publish_state / apublish_state   a login's live state (equity...), never stored
    push / apush                     an account frame to every session of a login
    notify / anotify                 a notification to one login or to everyone
    bind / push_saved                model bindings, and saves that bypass signals
    revoke_user / arevoke_user       close a user's sessions everywhere, refuse its tokens
    is_revoked / ais_revoked         whether a token issued at a given time was revoked since
    presence / apresence             sessions per login right now, over every server process
    command / CommandError           the host's own client commands, and their error replies
    CloseCode                        the close codes of protocol v1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

#: This release (PEP 440); the package metadata reads it from here.
__version__ = "0.2.0"

__all__ = [
    "__version__",
    "CloseCode",
    "CommandError",
    "command",
    "anotify",
    "apublish_quote",
    "apublish_status",
    "apush",
    "bind",
    "notify",
    "publish_quote",
    "publish_status",
    "apublish_state",
    "publish_state",
    "push",
    "push_saved",
    "arevoke_user",
    "revoke_user",
    "ais_revoked",
    "is_revoked",
    "apresence",
    "presence",
]

if TYPE_CHECKING:
    from broker_ws.exceptions import CommandError
    from broker_ws.publish.api import (
        anotify,
        apublish_quote,
        apublish_status,
        apush,
        notify,
        publish_quote,
        publish_status,
        push,
    )
    from broker_ws.publish.bindings import bind, push_saved
    from broker_ws.publish.revocation import ais_revoked, arevoke_user, is_revoked, revoke_user
    from broker_ws.publish.state import apublish_state, publish_state
    from broker_ws.session.commands import command
    from broker_ws.session.presence import apresence, presence
    from broker_ws.wire.protocol import CloseCode

_LOCATIONS = {
    "publish_quote": "broker_ws.publish.api",
    "apublish_quote": "broker_ws.publish.api",
    "publish_status": "broker_ws.publish.api",
    "apublish_status": "broker_ws.publish.api",
    "publish_state": "broker_ws.publish.state",
    "apublish_state": "broker_ws.publish.state",
    "push": "broker_ws.publish.api",
    "apush": "broker_ws.publish.api",
    "notify": "broker_ws.publish.api",
    "anotify": "broker_ws.publish.api",
    "bind": "broker_ws.publish.bindings",
    "push_saved": "broker_ws.publish.bindings",
    "CloseCode": "broker_ws.wire.protocol",
    "CommandError": "broker_ws.exceptions",
    "command": "broker_ws.session.commands",
    "revoke_user": "broker_ws.publish.revocation",
    "arevoke_user": "broker_ws.publish.revocation",
    "is_revoked": "broker_ws.publish.revocation",
    "ais_revoked": "broker_ws.publish.revocation",
    "presence": "broker_ws.session.presence",
    "apresence": "broker_ws.session.presence",
}


def __getattr__(name: str) -> Any:
    # Lazy: INSTALLED_APPS imports this package before models are ready.
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'broker_ws' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)
