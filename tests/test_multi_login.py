"""Rows of several logins, push/notify on another database, and a row saved more than
once in one transaction: frames carry each login's own seq and only committed states."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.db import transaction
from django.db.models.signals import post_save
from django.test import Client as HttpClient

from broker_ws.models import AccountEvent
from broker_ws.publish.api import notify, push
from broker_ws.publish.bindings import bind, push_saved, unbind
from project.broker.models import Account, Balance, Trade
from tests.exchange.models import Deal

pytestmark = pytest.mark.django_db(transaction=True)

DEAL_FIELDS = ["id", "symbol", "price", "status"]


@pytest.fixture
def deals_of_both_sides() -> Iterator[None]:
    """Deal frames go to the buyer's and to the seller's login."""
    bind(Deal, marker="o", login=["buyer.login", "seller.login"], fields=DEAL_FIELDS)
    yield
    unbind(Deal)


async def session(client_factory: Any, token: str) -> tuple[Any, dict[str, int]]:
    client = await client_factory()
    data = await client.authorize(token)
    return client, data["seq"]


@database_sync_to_async
def make_deal(buyer: str, seller: str, status: str = "open") -> int:
    with transaction.atomic():
        deal = Deal.objects.create(
            buyer=Account.objects.get(login=buyer),
            seller=Account.objects.get(login=seller),
            symbol="EURUSD",
            price=Decimal("1.085"),
            status=status,
        )
    return deal.pk


@database_sync_to_async
def events_of(login: str, using: str = "default", after: int = 0) -> list[list[Any]]:
    """The login's frames in the outbox with seq > ``after`` (``make_user``'s balance
    save gave each login seq 1)."""
    rows = AccountEvent.objects.using(using).filter(login=login, seq__gt=after).order_by("seq")
    return [orjson.loads(frame) for frame in rows.values_list("frame", flat=True)]


async def test_a_row_of_two_logins_reaches_each_with_its_own_seq(
    backend: str, make_user: Any, client_factory: Any, deals_of_both_sides: None
) -> None:
    """A deal between alice's 1001 and bob's 2001 reaches both, each numbered in its
    login's own sequence; a session sees only its own login's copy."""
    alice = await make_user("alice", ["1001"])
    bob = await make_user("bob", ["2001"])
    await database_sync_to_async(push)("1001", "b", ["first"])  # 1001 is one ahead
    alice_client, alice_seq = await session(client_factory, alice.token)
    bob_client, bob_seq = await session(client_factory, bob.token)
    deal = await make_deal("1001", "2001")
    assert await alice_client.recv() == [
        "o",
        "1001",
        alice_seq["1001"] + 1,
        deal,
        "EURUSD",
        1.085,
        "open",
    ]
    assert await bob_client.recv() == [
        "o",
        "2001",
        bob_seq["2001"] + 1,
        deal,
        "EURUSD",
        1.085,
        "open",
    ]
    assert alice_seq["1001"] == bob_seq["2001"] + 1
    await alice_client.assert_nothing(within=0.2)


async def test_a_login_on_both_sides_gets_one_frame(
    make_user: Any, client_factory: Any, deals_of_both_sides: None
) -> None:
    """A deal between two accounts of one login list (a login yielded twice) is one
    frame for that login, not two."""
    alice = await make_user("alice", ["1001"])
    client, seqs = await session(client_factory, alice.token)
    deal = await make_deal("1001", "1001")
    assert (await client.recv())[:4] == ["o", "1001", seqs["1001"] + 1, deal]
    assert len(await events_of("1001", after=seqs["1001"])) == 1
    await client.assert_nothing(within=0.2)


async def test_a_callable_login_may_yield_several_logins(
    make_user: Any, client_factory: Any
) -> None:
    """``login`` as one callable returning a list: every login in it gets the frame."""
    bind(Deal, marker="o", login=lambda d: [d.buyer.login, d.seller.login, None], fields=["id"])
    try:
        await make_user("alice", ["1001"])
        await make_user("bob", ["2001"])
        deal = await make_deal("1001", "2001")
        assert await events_of("1001", after=1) == [["o", "1001", 2, deal]]
        assert await events_of("2001", after=1) == [["o", "2001", 2, deal]]
    finally:
        unbind(Deal)


async def test_the_snapshot_lists_a_row_for_each_of_the_callers_logins(
    make_user: Any, deals_of_both_sides: None
) -> None:
    """alice holds both sides of one deal and one side of another: the snapshot lists
    the first twice (once per login, each with that login's seq) and the second once;
    bob, on the other side of the second, sees it with his login."""
    alice = await make_user("alice", ["1001", "1002"])
    bob = await make_user("bob", ["2001"])
    both = await make_deal("1001", "1002")
    half = await make_deal("2001", "1001")

    def snapshot(token: str) -> Any:
        response = HttpClient().get("/api/snapshot/", HTTP_AUTHORIZATION=f"Bearer {token}")
        assert response.status_code == 200
        return orjson.loads(response.content)

    mine = await database_sync_to_async(snapshot)(alice.token)
    deals = [f[:4] for f in mine["frames"] if f[0] == "o"]
    seq = mine["seq"]
    assert deals == [
        ["o", "1001", seq["1001"], both],
        ["o", "1002", seq["1002"], both],
        ["o", "1001", seq["1001"], half],
    ]
    theirs = await database_sync_to_async(snapshot)(bob.token)
    assert [f[:4] for f in theirs["frames"] if f[0] == "o"] == [
        ["o", "2001", theirs["seq"]["2001"], half]
    ]


# --- a row saved more than once in one transaction -----------------------------------


def _trade(login: str, ticket: int) -> Trade:
    return Trade(
        account=Account.objects.get(login=login),
        ticket=ticket,
        symbol="EURUSD",
        side="buy",
        volume=Decimal("1"),
        open_price=Decimal("1.1"),
    )


@pytest.fixture
def resaving_handler() -> Iterator[None]:
    """A host's own post_save handler that saves the trade again (as a matching engine
    that books the profit after the row exists does)."""

    def book_profit(sender: Any, instance: Trade, created: bool, **kwargs: Any) -> None:
        if created:
            instance.profit = Decimal("12.50")
            instance.save(update_fields=["profit", "updated_at"])

    post_save.connect(book_profit, sender=Trade, dispatch_uid="test:book_profit")
    yield
    post_save.disconnect(sender=Trade, dispatch_uid="test:book_profit")


async def test_a_row_saved_twice_in_a_transaction_sends_the_committed_state_once(
    backend: str, make_user: Any, client_factory: Any, resaving_handler: None
) -> None:
    """The host's handler re-saves the new trade inside the same transaction: the
    session gets one frame, at the next seq, with the profit the transaction commits
    (12.5), never the 0 that was overwritten before the commit."""
    alice = await make_user("alice", ["1001"])
    client, seqs = await session(client_factory, alice.token)

    @database_sync_to_async
    def open_trade() -> None:
        with transaction.atomic():
            _trade("1001", 501).save()

    await open_trade()
    frame = await client.recv()
    assert frame[:4] == ["o", "1001", seqs["1001"] + 1, 501]
    assert frame[9] == 12.5, frame
    await client.assert_nothing(within=0.2)
    assert [f[9] for f in await events_of("1001", after=seqs["1001"])] == [12.5]
    # The next transaction numbers on from there.
    await database_sync_to_async(push)("1001", "b", ["next"])
    assert (await client.recv())[:3] == ["b", "1001", seqs["1001"] + 2]


async def test_a_resave_undone_by_a_savepoint_is_not_sent(
    make_user: Any, client_factory: Any
) -> None:
    """Saved with profit 1 in the transaction, saved again with 2 in a savepoint that
    rolls back: the committed row has 1, and so has the one frame sent."""
    alice = await make_user("alice", ["1001"])
    client, seqs = await session(client_factory, alice.token)

    @database_sync_to_async
    def save() -> None:
        with transaction.atomic():
            trade = _trade("1001", 601)
            trade.profit = Decimal("1")
            trade.save()
            try:
                with transaction.atomic():
                    trade.profit = Decimal("2")
                    trade.save()
                    raise RuntimeError("undo the inner save")
            except RuntimeError:
                pass

    await save()
    frame = await client.recv()
    assert frame[:4] == ["o", "1001", seqs["1001"] + 1, 601] and frame[9] == 1
    await client.assert_nothing(within=0.2)
    assert [f[9] for f in await events_of("1001", after=seqs["1001"])] == [1]


async def test_the_same_row_twice_in_push_saved_is_one_frame_with_the_last_state(
    make_user: Any,
) -> None:
    await make_user("alice", ["1001"])

    @database_sync_to_async
    def twice() -> int:
        with transaction.atomic():
            first = Balance.objects.get(account__login="1001")
            second = Balance.objects.get(account__login="1001")
            first.equity, second.equity = Decimal("5"), Decimal("6")
            return push_saved([first, second])

    assert await twice() == 1
    assert [f[5] for f in await events_of("1001", after=1)] == [6]


async def test_saves_under_autocommit_each_commit_and_each_get_a_frame(
    make_user: Any,
) -> None:
    """Without a transaction every save commits its own state, so each is sent."""
    await make_user("alice", ["1001"])

    @database_sync_to_async
    def save_twice() -> None:
        balance = Balance.objects.get(account__login="1001")
        for amount in ("7", "8"):
            balance.balance = Decimal(amount)
            balance.save()

    await save_twice()
    assert [f[4] for f in await events_of("1001", after=1)] == [7, 8]


# --- push and notify on another database ---------------------------------------------


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
async def test_push_and_notify_belong_to_the_transaction_of_their_database(
    make_user: Any, client_factory: Any
) -> None:
    """``using="other"``: the frames are recorded in that database's outbox, inside its
    transaction: rolled back with it (nothing sent), sent when it commits."""
    alice = await make_user("alice", ["1001"])
    client, seqs = await session(client_factory, alice.token)

    @database_sync_to_async
    def catch_up() -> None:
        # The other database numbers 1001 on its own: bring it level with the default's.
        for _ in range(seqs["1001"]):
            push("1001", "b", ["level"], using="other")

    await catch_up()

    @database_sync_to_async
    def in_other(commit: bool) -> tuple[int, int | None]:
        try:
            with transaction.atomic(using="other"):
                seq = push("1001", "b", ["pushed"], using="other")
                note = notify("filled", login="1001", using="other")
                if not commit:
                    raise RuntimeError("roll back")
        except RuntimeError:
            pass
        return seq, note

    await in_other(commit=False)
    await client.assert_nothing(within=0.3)
    assert await events_of("1001", "other", after=seqs["1001"]) == []
    seq, note = await in_other(commit=True)
    assert seq == seqs["1001"] + 1
    assert (await client.recv())[:4] == ["b", "1001", seq, "pushed"]
    assert (await client.recv())[:3] == ["n", "1001", note]
    assert len(await events_of("1001", "other", after=seqs["1001"])) == 2
    assert await events_of("1001", after=seqs["1001"]) == []
