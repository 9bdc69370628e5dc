"""Publishing from any process: quotes, instrument statuses, account frames, notifications.

Each function encodes its frame once. Quotes go straight to the configured
backend; account frames and per-login notifications go through the database
outbox (:mod:`broker_ws.publish.accounts`), which numbers them and publishes them
when the current transaction commits, and broadcasts through their own table
(:mod:`broker_ws.publish.broadcasts`), so that every server process gets them. The sync functions
are safe from any thread (a request worker, a Celery task, a shell, a feed
loop) and reuse one connection pool per process, so they never pay the
per-call connection that ``async_to_sync(group_send)`` costs. The async ones
are for code already running in an event loop.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from channels.db import database_sync_to_async

from broker_ws.backends import get_backend
from broker_ws.publish import statuses
from broker_ws.publish.accounts import Pending, emit
from broker_ws.publish.alerts import check_quote
from broker_ws.publish.broadcasts import record_broadcast
from broker_ws.wire import channel_names, frames

Timestamp = dt.datetime | int | float | None


def _quote(symbol: str, bid: float, ask: float, ts: Timestamp) -> tuple[str, str]:
    if not isinstance(symbol, str) or not symbol:
        raise ValueError("symbol must be a non-empty string")
    for name, price in (("bid", bid), ("ask", ask)):
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise TypeError(f"{name} must be a number, not {type(price).__name__}")
        if not math.isfinite(price):
            raise ValueError(f"{name} must be finite, not {price!r}")
    return channel_names.quote_channel(symbol), frames.quote(
        symbol, bid, ask, frames.to_epoch_ms(ts)
    )


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
    check_quote(symbol, bid, ask)


async def apublish_quote(symbol: str, bid: float, ask: float, ts: Timestamp = None) -> None:
    """Async :func:`publish_quote`."""
    channel, frame = _quote(symbol, bid, ask, ts)
    await get_backend().apublish_quote(channel, symbol, frame)
    check_quote(symbol, bid, ask)


def _status(symbol: str, status: str, ts: Timestamp) -> tuple[str, str]:
    if not isinstance(symbol, str) or not symbol:
        raise ValueError("symbol must be a non-empty string")
    statuses.validate(status)
    return channel_names.quote_channel(symbol), frames.status(
        symbol, status, frames.to_epoch_ms(ts)
    )


def publish_status(symbol: str, status: str, ts: Timestamp = None) -> None:
    """Publish ``["s", symbol, status, ts_ms]`` to every session subscribed to ``symbol``.

    It travels on the symbol's quote channel, so every session gets it in order with
    the symbol's quotes (a quote published before it arrives before it), never
    conflated or throttled away, and it is kept as the symbol's last status: a later
    subscribe is answered with it, after the last quote.

    Args:
        symbol: exactly as clients subscribe to it (no case folding).
        status: ``open``, ``closed``, ``halted``, ``close_only`` or one of the host's
            ``INSTRUMENT_STATUSES``; anything else raises ValueError.
        ts: when the status took effect: aware datetime or epoch ms; None for now.
    """
    channel, frame = _status(symbol, status, ts)
    get_backend().publish_status(channel, symbol, frame)


async def apublish_status(symbol: str, status: str, ts: Timestamp = None) -> None:
    """Async :func:`publish_status`."""
    channel, frame = _status(symbol, status, ts)
    await get_backend().apublish_status(channel, symbol, frame)


def _account_parts(marker: str, fields: Sequence[Any], login: str) -> frames.FrameParts:
    if marker not in frames.ACCOUNT_MARKERS:
        raise ValueError(f"marker must be one of {sorted(frames.ACCOUNT_MARKERS)}, not {marker!r}")
    return frames.account_parts(marker, login, fields)


def push(login: str, marker: str, fields: Sequence[Any], using: str | None = None) -> int:
    """Send ``[marker, login, seq, *fields]`` to every session of ``login``.

    Model saves do this by themselves (see :mod:`broker_ws.publish.bindings`); call
    it for account events that are not model saves. Inside
    ``transaction.atomic()`` the frame is sent only if that transaction
    commits. ``using`` is the database alias of that transaction, as for
    :func:`broker_ws.push_saved` (default: ``"default"``). Returns the seq given.
    """
    login = str(login)
    return emit([Pending(login, _account_parts(marker, fields, login))], using)[0].seq


async def apush(login: str, marker: str, fields: Sequence[Any], using: str | None = None) -> int:
    """Async :func:`push` (the outbox write runs in Django's database thread)."""
    return await database_sync_to_async(push)(login, marker, fields, using)


def _broadcast(text: str, level: str) -> str:
    if not isinstance(text, str) or not isinstance(level, str):
        raise TypeError("text and level must be strings")
    return frames.broadcast_notification(level, text, frames.now_ms())


def notify(
    text: str, level: str = "info", login: str | None = None, using: str | None = None
) -> int | None:
    """Send a notification to one login (numbered, like account frames) or to every session.

    ``using``: the database alias of the transaction it belongs to, as for
    :func:`push`. Returns the seq given for a login, None for a broadcast.
    """
    frame = _broadcast(text, level)  # validates the arguments either way
    if login is None:
        record_broadcast(frame, using)
        return None
    login = str(login)
    parts = frames.notification_parts(level, text, frames.now_ms(), login)
    return emit([Pending(login, parts)], using)[0].seq


async def anotify(
    text: str, level: str = "info", login: str | None = None, using: str | None = None
) -> int | None:
    """Async :func:`notify` (the database write runs in Django's database thread)."""
    return await database_sync_to_async(notify)(text, level, login, using)
