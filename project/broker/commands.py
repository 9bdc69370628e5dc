"""The demo's own client commands (``BROKER_WS["COMMANDS"]``): open and close a trade.

They show what a host's handler does: check that the login in the request is one
of the session's (``identity.logins``), validate the rest of ``data`` (any JSON
the client sent), do the work in a transaction and return the reply's data.
The trade's own ``o`` frame reaches every session of the login through its
binding, like any other save. Sync handlers run in Django's database thread.
"""

from __future__ import annotations

import itertools
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction

from broker_ws.auth.identity import Identity
from broker_ws.exceptions import CommandError

from .models import Account, Trade

_tickets = itertools.count(int(time.time() * 1000) * 1000)


def _login(identity: Identity, data: Any) -> str:
    if not isinstance(data, dict):
        raise CommandError("bad_request", "data must be an object")
    login = data.get("login")
    if not isinstance(login, str) or login not in identity.logins:
        # The same answer for a login that is someone else's and one that does not exist.
        raise CommandError("unknown_login", "login is not one of this session's logins")
    return login


def _positive(data: dict[str, Any], name: str) -> Decimal:
    value = data.get(name)
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidOperation
        number = Decimal(str(value))
    except InvalidOperation:
        raise CommandError("bad_request", f"{name} must be a number") from None
    if not number.is_finite() or number <= 0 or number > 10**9:
        raise CommandError("bad_request", f"{name} must be positive")
    return number


def place_order(identity: Identity, data: Any) -> dict[str, Any]:
    """``{"login", "symbol", "side": "buy"|"sell", "volume", "price"}`` -> ``{"ticket"}``."""
    login = _login(identity, data)
    symbol, side = data.get("symbol"), data.get("side")
    if not isinstance(symbol, str) or not 0 < len(symbol) <= 64:
        raise CommandError("bad_request", "symbol must be a string of 1 to 64 characters")
    if side not in Trade.Side.values:
        raise CommandError("bad_request", "side must be buy or sell")
    volume, price = _positive(data, "volume"), _positive(data, "price")
    with transaction.atomic():
        trade = Trade.objects.create(
            account=Account.objects.get(login=login),
            ticket=next(_tickets),
            symbol=symbol,
            side=side,
            volume=volume.quantize(Decimal("0.01")),
            open_price=price.quantize(Decimal("0.000001")),
        )
    return {"ticket": trade.ticket, "status": trade.status}


def close_trade(identity: Identity, data: Any) -> dict[str, Any]:
    """``{"login", "ticket", "price"}`` -> ``{"ticket", "profit"}``."""
    login = _login(identity, data)
    ticket, price = data.get("ticket"), _positive(data, "price")
    with transaction.atomic():
        trade = (
            Trade.objects.select_for_update()
            .filter(account__login=login, ticket=ticket, status=Trade.Status.OPEN)
            .first()
            if isinstance(ticket, int) and not isinstance(ticket, bool)
            else None
        )
        if trade is None:
            raise CommandError("unknown_trade", "no open trade with that ticket", ticket=ticket)
        direction = 1 if trade.side == Trade.Side.BUY else -1
        trade.close_price = price.quantize(Decimal("0.000001"))
        trade.profit = (direction * (price - trade.open_price) * trade.volume * 100000).quantize(
            Decimal("0.01")
        )
        trade.status = Trade.Status.CLOSED
        trade.save()
    return {"ticket": trade.ticket, "profit": trade.profit}
