"""Which symbols a session may subscribe to.

Symbols are matched exactly as the server names them (``BTC/USD``,
``#AAPL``, ``EURUSD.m``, ``US 500``): no case folding, no trimming. By
default any non-empty string up to ``SYMBOL_MAX_LENGTH`` characters without
control characters is accepted; ``BROKER_WS['SYMBOLS']`` narrows that to a
fixed collection or to a callable's verdict, the same for everyone.

``BROKER_WS['SYMBOL_ENTITLEMENTS']`` then decides per user
(:func:`entitled`): a callable ``(identity, symbols) -> allowed symbols``, sync
(run in Django's database thread, so it may query the database) or async.
"""

from __future__ import annotations

import inspect
import logging
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from channels.db import database_sync_to_async
from django.db import Error as DatabaseError
from django.utils.module_loading import import_string

from broker_ws.auth.identity import Identity
from broker_ws.conf import conf
from broker_ws.exceptions import ProtocolError, Unavailable
from broker_ws.wire.protocol import ErrorCode

logger = logging.getLogger(__name__)


def _is_well_formed(symbol: str) -> bool:
    if not symbol or len(symbol) > conf.SYMBOL_MAX_LENGTH:
        return False
    # Control characters (C0, DEL and C1) would make logs and group names misleading.
    return not any(unicodedata.category(ch) == "Cc" for ch in symbol)


def _policy() -> Callable[[str], bool] | None:
    value = conf.SYMBOLS
    if value is None:
        return None
    if isinstance(value, str):
        return import_string(value)
    if callable(value):
        return value
    allowed = frozenset(value)
    return allowed.__contains__


def split_symbols(symbols: Iterable[str]) -> tuple[list[str], list[str]]:
    """Return ``(accepted, refused)``, each in the caller's order."""
    policy = _policy()
    accepted: list[str] = []
    refused: list[str] = []
    for symbol in symbols:
        ok = _is_well_formed(symbol) and (policy is None or bool(policy(symbol)))
        (accepted if ok else refused).append(symbol)
    return accepted, refused


def _entitlements() -> Callable[[Identity, list[str]], Any] | None:
    value = conf.SYMBOL_ENTITLEMENTS
    if value is None:
        return None
    if isinstance(value, str):
        return import_string(value)
    return value


async def entitled(identity: Identity, symbols: Sequence[str]) -> tuple[list[str], list[str]]:
    """Ask ``SYMBOL_ENTITLEMENTS`` which of ``symbols`` this user may subscribe to;
    return ``(allowed, refused)``, each in the caller's order (all allowed when the
    setting is None). Symbols the callable returns that were not asked about are
    ignored.

    Raises:
        ProtocolError: the callable failed (or could not be imported, or returned
            something that is not an iterable of strings): code ``unavailable`` for a
            database error or :class:`~broker_ws.exceptions.Unavailable`, else
            ``internal_error``, with ``symbols`` the symbols asked about. What failed
            stays in the server's log.
    """
    symbols = list(symbols)
    if not symbols:
        return [], []
    try:
        policy = _entitlements()
        if policy is None:
            return symbols, []
        if inspect.iscoroutinefunction(policy):
            result = await policy(identity, list(symbols))
        else:
            result = await database_sync_to_async(policy)(identity, list(symbols))
            if inspect.isawaitable(result):  # a sync callable that returned a coroutine
                result = await result
        if isinstance(result, str):
            raise TypeError("SYMBOL_ENTITLEMENTS returned a string, not an iterable of symbols")
        allowed = {item for item in result if isinstance(item, str)}
    except (DatabaseError, Unavailable) as exc:
        logger.warning("broker_ws: SYMBOL_ENTITLEMENTS failed on a dependency (%s)", exc)
        raise ProtocolError(
            ErrorCode.UNAVAILABLE,
            "the server cannot check these symbols now; retry later",
            symbols=symbols,
        ) from None
    except Exception:
        logger.exception("broker_ws: SYMBOL_ENTITLEMENTS failed")
        raise ProtocolError(
            ErrorCode.INTERNAL_ERROR, "the server could not check these symbols", symbols=symbols
        ) from None
    return [s for s in symbols if s in allowed], [s for s in symbols if s not in allowed]
