"""Which symbols a session may subscribe to.

Symbols are matched exactly as the server names them (``BTC/USD``,
``#AAPL``, ``EURUSD.m``, ``US 500``): no case folding, no trimming. By
default any non-empty string up to ``SYMBOL_MAX_LENGTH`` characters without
control characters is accepted; ``BROKER_WS['SYMBOLS']`` narrows that to a
fixed collection or to a callable's verdict.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable

from django.utils.module_loading import import_string

from broker_ws.conf import conf


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
