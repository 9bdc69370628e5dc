"""Publishing from any process: quotes, account frames, notifications.

Each function encodes its frame once and hands it to the configured backend.
The sync functions are safe from any thread (a request worker, a Celery
task, a shell, a feed loop) and reuse one connection pool per process, so
they never pay the per-call connection that ``async_to_sync(group_send)``
costs. The async ones are for code already running in an event loop.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from broker_ws import frames, groups
from broker_ws.backends import get_backend

Timestamp = dt.datetime | int | float | None


def _quote(symbol: str, bid: float, ask: float, ts: Timestamp) -> tuple[str, str]:
    if not isinstance(symbol, str) or not symbol:
        raise ValueError("symbol must be a non-empty string")
    for name, price in (("bid", bid), ("ask", ask)):
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise TypeError(f"{name} must be a number, not {type(price).__name__}")
        if not math.isfinite(price):
            raise ValueError(f"{name} must be finite, not {price!r}")
    return groups.quote_group(symbol), frames.quote(symbol, bid, ask, frames.to_epoch_ms(ts))


def publish_quote(symbol: str, bid: float, ask: float, ts: Timestamp = None) -> None:
    """Publish one quote to every session subscribed to ``symbol``.

    Args:
        symbol: exactly as clients subscribe to it (no case folding).
        bid: bid price, a finite number.
        ask: ask price, a finite number.
        ts: when the quote was made: aware datetime or epoch ms; None for now.
    """
    channel, frame = _quote(symbol, bid, ask, ts)
    get_backend().publish_quote(channel, symbol, frame)


async def apublish_quote(symbol: str, bid: float, ask: float, ts: Timestamp = None) -> None:
    """Async :func:`publish_quote`."""
    channel, frame = _quote(symbol, bid, ask, ts)
    await get_backend().apublish_quote(channel, symbol, frame)


def _account(marker: str, login: str, fields: Sequence[Any]) -> tuple[str, tuple[str, str]]:
    if marker not in frames.ACCOUNT_MARKERS:
        raise ValueError(f"marker must be one of {sorted(frames.ACCOUNT_MARKERS)}, not {marker!r}")
    login = str(login)
    return groups.login_group(login), frames.account_parts(marker, login, fields)


def push(login: str, marker: str, fields: Sequence[Any]) -> int:
    """Send ``[marker, login, seq, *fields]`` to every session of ``login`` now.

    Model saves do this by themselves (see :mod:`broker_ws.bindings`); call
    it for account events that are not model saves. Returns the seq given.
    """
    channel, parts = _account(marker, login, fields)
    return get_backend().append_account(channel, [parts])[0]


async def apush(login: str, marker: str, fields: Sequence[Any]) -> int:
    """Async :func:`push`."""
    channel, parts = _account(marker, login, fields)
    return (await get_backend().aappend_account(channel, [parts]))[0]


def _notification(text: str, level: str, login: str | None) -> tuple[str, int]:
    if not isinstance(text, str) or not isinstance(level, str):
        raise TypeError("text and level must be strings")
    return (groups.login_group(str(login)) if login is not None else groups.everyone_group(),
            frames.now_ms())


def notify(text: str, level: str = "info", login: str | None = None) -> int | None:
    """Send a notification to one login (with its seq) or to every session.

    Returns the seq given for a login, None for a broadcast.
    """
    channel, ts_ms = _notification(text, level, login)
    backend = get_backend()
    if login is None:
        backend.publish(channel, frames.broadcast_notification(level, text, ts_ms))
        return None
    parts = frames.notification_parts(level, text, ts_ms, str(login))
    return backend.append_account(channel, [parts])[0]


async def anotify(text: str, level: str = "info", login: str | None = None) -> int | None:
    """Async :func:`notify`."""
    channel, ts_ms = _notification(text, level, login)
    backend = get_backend()
    if login is None:
        await backend.apublish(channel, frames.broadcast_notification(level, text, ts_ms))
        return None
    parts = frames.notification_parts(level, text, ts_ms, str(login))
    return (await backend.aappend_account(channel, [parts]))[0]
