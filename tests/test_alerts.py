"""The price-alert engine: quotes fire armed alerts, once, through a model save."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import websockets
from channels.db import database_sync_to_async
from django.test import override_settings

from broker_ws.checks import check_settings
from broker_ws.publish.alerts import SymbolAlerts, get_engine
from broker_ws.publish.api import apublish_quote, publish_quote
from project.broker.models import Account, PriceAlert
from tests.conftest import broker_ws_settings
from tests.servers import deployment, obtain_token
from tests.test_e2e import next_frame

ALERTS = {"model": "broker.PriceAlert", "refresh": 0.2}


def test_symbol_alerts_fire_exactly_the_crossed_ones() -> None:
    """Above alerts at or under the bid fire, below alerts at or over the ask fire."""
    alerts = SymbolAlerts(above=[(1.0, 1), (1.1, 2), (1.2, 3)], below=[(0.8, 4), (0.9, 5)])
    assert alerts.fire(bid=1.1, ask=1.15) == [1, 2]
    assert alerts.fire(bid=0.85, ask=0.9) == [5]
    assert alerts.fire(bid=1.0, ask=1.05) == []
    assert alerts.above == [(1.2, 3)] and alerts.below == [(0.8, 4)]


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate`` (a sync DB check) until true, or fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not await database_sync_to_async(predicate)():
            await asyncio.sleep(0.02)


@database_sync_to_async
def make_alert(login: str, condition: str, price: str, symbol: str = "EURUSD") -> int:
    account = Account.objects.get(login=login)
    alert = PriceAlert.objects.create(
        account=account, symbol=symbol, condition=condition, price=Decimal(price)
    )
    return alert.pk


@pytest.mark.django_db(transaction=True)
async def test_quote_fires_alert_and_the_a_frame_follows(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A quote crossing an armed alert saves it triggered; its login's session gets
    the ``a`` frame; an alert not crossed stays armed."""
    with override_settings(BROKER_WS=broker_ws_settings(PRICE_ALERTS=ALERTS)):
        alice = await make_user("alice", ["1001"])
        client = await client_factory()
        await client.authorize(alice.token)
        fired = await make_alert("1001", "above", "1.2000")
        kept = await make_alert("1001", "below", "1.0000")
        await database_sync_to_async(get_engine)()
        await wait_for(lambda: get_engine().index.get("EURUSD") is not None)  # type: ignore[union-attr]
        created = [await client.recv() for _ in range(2)]
        assert [(f[3], f[7]) for f in created] == [(fired, "active"), (kept, "active")]
        for _ in range(2):  # the second quote must not fire it again
            await apublish_quote("EURUSD", 1.2001, 1.2003)
        frame = await client.recv()
        assert frame[0] == "a" and frame[3] == fired and frame[7] == "triggered"
        statuses = dict(
            await database_sync_to_async(
                lambda: list(PriceAlert.objects.values_list("pk", "status"))
            )()
        )
        assert statuses[fired] == "triggered" and statuses[kept] == "active"
        await client.send("ping")
        assert await client.recv_text() == "pong"  # no second a frame before it


async def test_two_publisher_processes_fire_an_alert_exactly_once(tmp_path: Path) -> None:
    """Two processes publishing the same crossing quote at once (PostgreSQL, Redis):
    the alert is triggered once, and its session gets exactly one triggered frame."""
    with deployment("redis", tmp_path) as demo:
        host = demo.start_server("--no-feed")
        token = obtain_token(host, "bob", "bob-demo-pass")["access"]
        async with websockets.connect(f"ws://{host}/") as ws:
            await ws.send(json.dumps({"authorization": token}))
            assert json.loads(await ws.recv())["event"] == "authorized"
            # bob's demo alert: "US 500" below 5000.
            publish = ("ws_publish_quote", "US 500", "4990", "4991")
            await asyncio.gather(
                asyncio.to_thread(demo.manage, *publish), asyncio.to_thread(demo.manage, *publish)
            )
            await asyncio.to_thread(demo.manage, "ws_notify", "marker", "--login", "2001")
            seen = []
            while not seen or seen[-1][0] != "n":
                seen.append(await next_frame(ws, lambda f: isinstance(f, list)))
        triggered = [f for f in seen if f[0] == "a"]
        assert len(triggered) == 1 and triggered[0][4:8] == ["US 500", "below", 5000, "triggered"]


@pytest.mark.django_db(transaction=True)
def test_alert_saved_in_this_process_is_indexed_at_once(django_db_blocker: Any) -> None:
    """Creating or cancelling an alert updates the engine without waiting for a reload."""
    from tests.conftest import _create_user

    with override_settings(BROKER_WS=broker_ws_settings(PRICE_ALERTS={**ALERTS, "refresh": 3600})):
        _create_user("alice", ["1001"])
        engine = get_engine()
        assert engine is not None
        account = Account.objects.get(login="1001")
        alert = PriceAlert.objects.create(
            account=account, symbol="XAUUSD", condition="below", price=Decimal("2000")
        )
        assert [pk for _, pk in engine.index["XAUUSD"].below] == [alert.pk]
        alert.status = "cancelled"
        alert.save()
        assert engine.index["XAUUSD"].below == []
        publish_quote("XAUUSD", 1900, 1901)  # would have fired it
        alert.refresh_from_db()
        assert alert.status == "cancelled"


@pytest.mark.parametrize(
    "value",
    [{"model": "broker.NoSuchModel"}, {"model": "broker.PriceAlert", "price": "prise"}, {}],
)
def test_check_e010_price_alerts_unusable(value: dict[str, Any]) -> None:
    """PRICE_ALERTS naming a missing model or field is E010."""
    with override_settings(BROKER_WS=broker_ws_settings(PRICE_ALERTS=value)):
        assert [m.id for m in check_settings()] == ["broker_ws.E010"]
