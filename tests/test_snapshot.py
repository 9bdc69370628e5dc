"""GET /api/snapshot/: the caller's current account state as stream frames, with seq."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient
from django.test.utils import isolate_apps

from project.broker.models import Account, PriceAlert, Trade

pytestmark = pytest.mark.django_db(transaction=True)


def get_snapshot(token: str | None, query: str = "") -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return HttpClient().get(f"/api/snapshot/{query}", **headers)


@database_sync_to_async
def add_rows(login: str) -> None:
    account = Account.objects.get(login=login)
    ticket = int(login) * 10
    Trade.objects.create(
        account=account,
        ticket=ticket,
        symbol="EURUSD",
        side="buy",
        volume=Decimal("1"),
        open_price=Decimal("1.1"),
    )
    Trade.objects.create(
        account=account,
        ticket=ticket + 1,
        symbol="EURUSD",
        side="sell",
        volume=Decimal("2"),
        open_price=Decimal("1.2"),
        status="closed",
    )
    PriceAlert.objects.create(
        account=account, symbol="EURUSD", condition="above", price=Decimal("2")
    )
    PriceAlert.objects.create(
        account=account, symbol="EURUSD", condition="below", price=Decimal("1"), status="cancelled"
    )


async def test_snapshot_lists_current_rows_of_the_callers_logins_as_frames(
    make_user: Any,
) -> None:
    """Balances, open trades and active alerts of the caller's logins only, each frame
    in the stream's layout with the login's current seq."""
    alice = await make_user("alice", ["1001", "1002"])
    await make_user("bob", ["2001"])
    await add_rows("1001")
    await add_rows("2001")
    response = await database_sync_to_async(get_snapshot)(alice.token)
    assert response.status_code == 200
    body = orjson.loads(response.content)
    seq = body["seq"]
    assert set(seq) == {"1001", "1002"} and seq["1001"] == 5  # balance, 2 trades, 2 alerts
    frames = body["frames"]
    assert [(f[0], f[1]) for f in frames] == [
        ("b", "1001"),
        ("b", "1002"),
        ("o", "1001"),
        ("a", "1001"),
    ]
    assert all(f[2] == seq[f[1]] for f in frames)
    assert frames[2][3:7] == [10010, "EURUSD", "buy", 1]
    assert frames[3][7] == "active"


async def test_snapshot_seq_is_where_the_stream_continues(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """The snapshot's seq equals the stream's, and the next live frame has seq + 1."""
    from tests.test_accounts import save_balance, session

    alice = await make_user("alice", ["1001"])
    client, data = await session(client_factory, alice.token)
    body = orjson.loads((await database_sync_to_async(get_snapshot)(alice.token)).content)
    assert body["seq"] == data["seq"]
    await save_balance("1001", "5")
    assert (await client.recv())[2] == body["seq"]["1001"] + 1


async def test_snapshot_of_another_users_login_is_not_found(make_user: Any) -> None:
    """?login= naming a login the caller is not linked to is a 404, like a missing one."""
    alice = await make_user("alice", ["1001"])
    await make_user("bob", ["2001"])
    for login in ("2001", "9999"):
        response = await database_sync_to_async(get_snapshot)(alice.token, f"?login={login}")
        assert response.status_code == 404
    response = await database_sync_to_async(get_snapshot)(alice.token, "?login=1001")
    assert list(orjson.loads(response.content)["seq"]) == ["1001"]


async def test_snapshot_needs_a_valid_access_token(make_user: Any) -> None:
    """No token, or a refresh token, is refused with 401."""
    alice = await make_user("alice", ["1001"])
    for token in (None, alice.refresh):
        response = await database_sync_to_async(get_snapshot)(token)
        assert response.status_code == 401


async def test_snapshot_queries_do_not_grow_with_the_rows(make_user: Any) -> None:
    """The login path (``account.login``) is joined, not read per row: a login with
    many open trades costs the same queries as one with a few."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    alice = await make_user("alice", ["1001"])

    @database_sync_to_async
    def queries_with_trades(count: int) -> int:
        account = Account.objects.get(login="1001")
        Trade.objects.filter(account=account).delete()
        for i in range(count):
            Trade.objects.create(
                account=account,
                ticket=500_000 + i,
                symbol="EURUSD",
                side="buy",
                volume=Decimal("1"),
                open_price=Decimal("1.1"),
            )
        with CaptureQueriesContext(connection) as captured:
            assert get_snapshot(alice.token).status_code == 200
        return len(captured.captured_queries)

    assert await queries_with_trades(20) == await queries_with_trades(2)


def test_related_paths_follow_forward_relations_only() -> None:
    """``account.login`` joins ``account``; plain fields, callables and paths through
    something that is not a concrete forward relation of the same database join
    nothing, so ``select_related`` never sees a name it would refuse."""
    from broker_ws.outbox.snapshot import related_paths
    from broker_ws.publish.bindings import Binding

    binding = Binding(
        Trade,
        "o",
        "account.login",
        ("ticket", "account.user.username", "account.no_such.x", lambda trade: trade.pk),
    )
    assert related_paths(binding) == ["account", "account__user"]
    assert related_paths(Binding(Trade, "o", "ticket", ("symbol",))) == []
    # A reverse relation and a column name ("account_id") are not joined.
    assert related_paths(Binding(Account, "b", "login", ("trades.count", "user_id.real"))) == []


@isolate_apps("project.broker")
def test_related_paths_skip_generic_and_unconstrained_relations() -> None:
    """A generic foreign key (``select_related`` refuses it) is never joined; a field
    path through a foreign key without a database constraint is not joined either
    (an inner join would drop the row whose target is missing)."""
    from django.contrib.contenttypes.fields import GenericForeignKey
    from django.contrib.contenttypes.models import ContentType
    from django.db import models

    from broker_ws.outbox.snapshot import related_paths
    from broker_ws.publish.bindings import Binding

    class Position(models.Model):
        account = models.ForeignKey(Account, on_delete=models.CASCADE)
        loose = models.ForeignKey(
            Account, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
        )
        kind = models.ForeignKey(ContentType, on_delete=models.CASCADE)
        target_id = models.PositiveIntegerField()
        target = GenericForeignKey("kind", "target_id")

        class Meta:
            app_label = "broker"

    binding = Binding(Position, "o", "account.login", ("target.code", "target.x.y", "loose.name"))
    assert related_paths(binding) == ["account"]
    assert related_paths(Binding(Position, "o", "loose.login", ())) == ["loose"]
