"""Account frames from model saves, push() and notify(): commit-only, isolated per
login, numbered without gaps, resumable, and never lost when the bus fails."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import DatabaseError, transaction
from django.test import override_settings

from broker_ws.outbox import store
from broker_ws.publish.api import anotify, notify, push
from broker_ws.publish.bindings import push_saved
from broker_ws.wire.frames import account_parts
from project.broker.models import Balance, PriceAlert, Trade
from tests.conftest import broker_ws_settings

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def save_balance(login: str, amount: str) -> None:
    with transaction.atomic():
        balance = Balance.objects.get(account__login=login)
        balance.balance = Decimal(amount)
        balance.save()


@database_sync_to_async
def rolled_back_save(login: str) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        balance = Balance.objects.get(account__login=login)
        balance.balance = Decimal("666")
        balance.save()
        raise RuntimeError("rollback")


async def session(client_factory: Any, token: str, **resume: int) -> tuple[Any, Any]:
    """A connected, authorized client and its ``authorized`` data."""
    client = await client_factory()
    await client.send({"authorization": token, **({"resume": resume} if resume else {})})
    reply = await client.recv()
    assert reply["event"] == "authorized", reply
    return client, reply["data"]


async def test_save_pushes_frame_to_every_session_of_its_login(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A committed balance save reaches both sessions of the login with the next seq."""
    alice = await make_user("alice", ["1001"])
    first, data = await session(client_factory, alice.token)
    second, _ = await session(client_factory, alice.token)
    seq = data["seq"]["1001"]
    await save_balance("1001", "250.50")
    for client in (first, second):
        frame = await client.recv()
        assert frame[:5] == ["b", "1001", seq + 1, "USD", 250.50]


async def test_rolled_back_save_sends_nothing_and_takes_no_seq(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A rolled-back save sends no frame; the next frame has the very next seq."""
    alice = await make_user("alice", ["1001"])
    client, data = await session(client_factory, alice.token)
    seq = data["seq"]["1001"]
    await rolled_back_save("1001")
    await anotify("marker", login="1001")
    assert (await client.recv())[:5] == ["n", "1001", seq + 1, "info", "marker"]


async def test_session_never_receives_another_logins_frames(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Bob's saves never reach Alice's session, whose next frame is her own."""
    alice = await make_user("alice", ["1001"])
    await make_user("bob", ["2001"])
    client, _ = await session(client_factory, alice.token)
    await save_balance("2001", "1")
    await anotify("for bob", login="2001")
    await anotify("for alice", login="1001")
    frame = await client.recv()
    assert frame[:2] == ["n", "1001"] and frame[4] == "for alice"


async def test_seq_rises_by_one_across_markers(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Balance, trade, alert and per-login notification frames share one counter."""
    alice = await make_user("alice", ["1001"])
    client, data = await session(client_factory, alice.token)
    seq = data["seq"]["1001"]

    @database_sync_to_async
    def save_all() -> None:
        with transaction.atomic():
            balance = Balance.objects.get(account__login="1001")
            balance.save()
            Trade.objects.create(
                account=balance.account,
                ticket=77,
                symbol="EURUSD",
                side="buy",
                volume=Decimal("1"),
                open_price=Decimal("1.1"),
            )
            PriceAlert.objects.create(
                account=balance.account, symbol="EURUSD", condition="above", price=Decimal("2")
            )
        notify("done", login="1001")

    await save_all()
    frames = [await client.recv() for _ in range(4)]
    assert [f[0] for f in frames] == ["b", "o", "a", "n"]
    assert [f[2] for f in frames] == [seq + 1, seq + 2, seq + 3, seq + 4]
    assert frames[1][3:7] == [77, "EURUSD", "buy", 1]


async def test_push_saved_sends_frames_for_saves_without_signals(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """QuerySet.update() sends nothing by itself; push_saved() sends the re-read rows."""
    alice = await make_user("alice", ["1001"])
    client, data = await session(client_factory, alice.token)

    @database_sync_to_async
    def update() -> int:
        with transaction.atomic():
            Balance.objects.filter(account__login="1001").update(equity=Decimal("42"))
            return push_saved(Balance.objects.filter(account__login="1001"))

    assert await update() == 1
    frame = await client.recv()
    assert frame[:3] == ["b", "1001", data["seq"]["1001"] + 1] and frame[5] == 42


async def test_push_sends_account_frame_without_a_model(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """push() numbers and sends a frame for an event that is not a model save."""
    alice = await make_user("alice", ["1001"])
    client, data = await session(client_factory, alice.token)
    seq = await database_sync_to_async(push)("1001", "o", [1, "closed"])
    assert seq == data["seq"]["1001"] + 1
    assert await client.recv() == ["o", "1001", seq, 1, "closed"]


async def test_broadcast_notification_reaches_every_authorized_session(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """notify() without a login reaches every session, with null login and seq."""
    alice = await make_user("alice", ["1001"])
    bob = await make_user("bob", ["2001"])
    clients = [(await session(client_factory, u.token))[0] for u in (alice, bob)]
    await anotify("maintenance at 22:00", level="warning")
    for client in clients:
        frame = await client.recv()
        assert frame[:5] == ["n", None, None, "warning", "maintenance at 22:00"]


async def test_bus_failure_after_commit_neither_raises_nor_loses_the_frame(
    make_user: Any, client_factory: Any
) -> None:
    """With the publisher's Redis unreachable the save succeeds, and the server
    process still delivers the frame, read back from the outbox."""
    from tests.conftest import redis_settings

    config = redis_settings(OUTBOX_POLL_INTERVAL=0.05)
    with override_settings(BROKER_WS=config):
        alice = await make_user("alice", ["1001"])
        client, data = await session(client_factory, alice.token)
        with override_settings(BROKER_WS={**config, "REDIS_URL": "redis://127.0.0.1:1/0"}):
            await save_balance("1001", "9.99")  # publishing fails: nothing raised
        frame = await client.recv()
        assert frame[:5] == ["b", "1001", data["seq"]["1001"] + 1, "USD", 9.99]


async def test_a_frame_the_bus_missed_is_read_again_when_reading_it_failed(
    make_user: Any, client_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll's cursor is already past a frame whose text could not be read (a
    locked or briefly unreachable database): the next poll asks for it again."""
    with override_settings(BROKER_WS=broker_ws_settings(OUTBOX_POLL_INTERVAL=0.05)):
        alice = await make_user("alice", ["1001"])
        client, data = await session(client_factory, alice.token)
        asked: list[list[int]] = []
        events_by_id = store.events_by_id

        def flaky(ids: list[int]) -> list[store.Event]:
            asked.append(list(ids))
            if len(asked) == 1:
                raise DatabaseError("database is locked")
            return events_by_id(ids)

        monkeypatch.setattr(store, "events_by_id", flaky)

        @database_sync_to_async
        def record_without_publishing() -> None:
            store.record({"1001": [account_parts("o", "1001", ["lost"])]}, "default", 1000)

        await record_without_publishing()
        assert await client.recv() == ["o", "1001", data["seq"]["1001"] + 1, "lost"]
        assert len(asked) == 2 and asked[0] == asked[1]


async def test_frames_kept_for_a_later_read_are_capped_and_the_rest_gap_filled(
    make_user: Any, client_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the frames cannot be read, only the newest ``MAX_UNFETCHED`` are kept to
    ask for again; the older ones still arrive, in order, by the gap fill of the next
    frame the poll does deliver."""
    from broker_ws.session import outbox_follower

    monkeypatch.setattr(outbox_follower, "MAX_UNFETCHED", 1)
    with override_settings(BROKER_WS=broker_ws_settings(OUTBOX_POLL_INTERVAL=0.05)):
        alice = await make_user("alice", ["1001"])
        client, data = await session(client_factory, alice.token)
        seq = data["seq"]["1001"]
        asked: list[list[int]] = []
        events_by_id = store.events_by_id

        def failing_twice(ids: list[int]) -> list[store.Event]:
            asked.append(list(ids))
            if len(asked) <= 2:
                raise DatabaseError("database is locked")
            return events_by_id(ids)

        monkeypatch.setattr(store, "events_by_id", failing_twice)

        @database_sync_to_async
        def record_two_without_publishing() -> None:
            parts = [account_parts("o", "1001", [text]) for text in ("first", "second")]
            store.record({"1001": parts}, "default", 1000)  # one commit: one poll sees both

        await record_two_without_publishing()
        assert await client.recv() == ["o", "1001", seq + 1, "first"]
        assert await client.recv() == ["o", "1001", seq + 2, "second"]
        assert all(len(ids) == 1 for ids in asked[1:]), asked


async def test_the_outbox_task_lives_on_after_a_failure_and_the_frame_still_arrives(
    make_user: Any,
    client_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Handling what the poll read fails once (a bug, say): it is logged, the task
    goes on, and the frame it dropped arrives by the gap fill of the next one."""
    from broker_ws.session.logins import LoginStreams

    with override_settings(BROKER_WS=broker_ws_settings(OUTBOX_POLL_INTERVAL=0.05)):
        alice = await make_user("alice", ["1001"])
        client, data = await session(client_factory, alice.token)
        seq = data["seq"]["1001"]
        needs = LoginStreams.needs
        calls: list[int] = []

        def needs_failing_once(self: LoginStreams, login: str, event_seq: int) -> bool:
            calls.append(event_seq)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return needs(self, login, event_seq)

        monkeypatch.setattr(LoginStreams, "needs", needs_failing_once)

        @database_sync_to_async
        def record_without_publishing(text: str) -> None:
            store.record({"1001": [account_parts("o", "1001", [text])]}, "default", 1000)

        await record_without_publishing("first")
        async with asyncio.timeout(5):
            while not calls:
                await asyncio.sleep(0.01)
        await record_without_publishing("second")
        assert await client.recv() == ["o", "1001", seq + 1, "first"]
        assert await client.recv() == ["o", "1001", seq + 2, "second"]
    assert any("outbox poll read failed" in r.getMessage() for r in caplog.records)


async def test_gap_on_the_bus_is_filled_from_the_outbox_in_order(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A frame that never reached the bus is delivered before the next one that did
    (the poller is slowed down so that only the gap fill can deliver it)."""
    with override_settings(BROKER_WS=broker_ws_settings(OUTBOX_POLL_INTERVAL=3600)):
        alice = await make_user("alice", ["1001"])
        client, data = await session(client_factory, alice.token)
        seq = data["seq"]["1001"]

        @database_sync_to_async
        def record_without_publishing() -> None:
            store.record({"1001": [account_parts("o", "1001", ["lost"])]}, "default", 1000)

        await record_without_publishing()
        await anotify("after", login="1001")
        assert await client.recv() == ["o", "1001", seq + 1, "lost"]
        assert (await client.recv())[:3] == ["n", "1001", seq + 2]


async def test_resume_replays_exactly_the_missed_frames_before_live_ones(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A reconnecting client naming its last seq gets the missed frames, in order."""
    alice = await make_user("alice", ["1001", "1002"])
    first, data = await session(client_factory, alice.token)
    seen = data["seq"]["1001"]
    await first.close()
    for amount in ("1", "2", "3"):
        await save_balance("1001", amount)
    client, data = await session(client_factory, alice.token, **{"1001": seen})
    assert data["seq"]["1001"] == seen + 3
    replayed = [await client.recv() for _ in range(3)]
    assert [(f[2], f[4]) for f in replayed] == [(seen + 1, 1), (seen + 2, 2), (seen + 3, 3)]
    await save_balance("1001", "4")
    assert (await client.recv())[2:5] == [seen + 4, "USD", 4]


async def test_resume_past_the_kept_history_asks_for_a_resync(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """When history no longer reaches back, the client is told to resync that login."""
    alice = await make_user("alice", ["1001"])
    with override_settings(BROKER_WS=broker_ws_settings(HISTORY_SIZE=2)):
        for amount in ("1", "2", "3", "4"):
            await save_balance("1001", amount)
        client, data = await session(client_factory, alice.token, **{"1001": 0})
        current = data["seq"]["1001"]
        assert await client.recv() == {"event": "resync", "data": {"1001": current}}


async def test_resume_ignores_logins_the_token_is_not_linked_to(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Naming another user's login in resume replays nothing of it."""
    alice = await make_user("alice", ["1001"])
    await make_user("bob", ["2001"])
    await save_balance("2001", "5")
    client, data = await session(client_factory, alice.token, **{"2001": 0})
    assert data["logins"] == ["1001"]
    await client.send("ping")
    assert await client.recv_text() == "pong"


async def test_resume_with_bad_shape_is_an_error(make_user: Any, client_factory: Any) -> None:
    """A resume that is not a map of logins to seqs gets bad_message; no session state."""
    alice = await make_user("alice", ["1001"])
    client = await client_factory()
    await client.send({"authorization": alice.token, "resume": {"1001": -1}})
    reply = await client.recv()
    assert reply["event"] == "error" and reply["data"]["code"] == "bad_message"


class BalanceProxy(Balance):
    """A proxy of a bound model, as hosts declare for admin variants."""

    class Meta:
        proxy = True
        app_label = "broker"


async def test_save_through_a_proxy_model_pushes_like_the_bound_model(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Saving a proxy instance of a bound model pushes the bound model's frame."""
    alice = await make_user("alice", ["1001"])
    client, data = await session(client_factory, alice.token)

    @database_sync_to_async
    def save() -> None:
        with transaction.atomic():
            proxy = BalanceProxy.objects.get(account__login="1001")
            proxy.balance = Decimal("31.5")
            proxy.save()

    await save()
    assert (await client.recv())[:5] == ["b", "1001", data["seq"]["1001"] + 1, "USD", 31.5]


async def test_save_with_expressions_and_strings_sends_the_saved_numbers(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """F() updates and strings assigned to decimal fields go out as the stored numbers."""
    from django.db.models import F

    alice = await make_user("alice", ["1001"])
    client, _ = await session(client_factory, alice.token)

    @database_sync_to_async
    def save() -> None:
        with transaction.atomic():
            balance = Balance.objects.get(account__login="1001")
            balance.balance = F("balance") + 1  # 100 -> 101
            balance.equity = "55.25"  # type: ignore[assignment]
            balance.save()

    await save()
    frame = await client.recv()
    assert frame[4:6] == [101, 55.25]


async def test_decimal_fields_keep_their_decimal_places_on_the_wire(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """An int assigned to a decimal field goes out with the field's decimal places,
    as the database keeps it (250.00, not 250)."""
    alice = await make_user("alice", ["1001"])
    client, _ = await session(client_factory, alice.token)

    @database_sync_to_async
    def save() -> None:
        with transaction.atomic():
            balance = Balance.objects.get(account__login="1001")
            balance.balance = 250  # type: ignore[assignment]
            balance.save()

    await save()
    assert ',"USD",250.00,' in await client.recv_text()


async def test_resume_from_a_process_that_is_behind_skips_what_the_client_has(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A client that saw seq N elsewhere, reconnecting to a process that has not
    delivered N yet, gets neither a resync nor N again, and then N+1."""
    with override_settings(BROKER_WS=broker_ws_settings(OUTBOX_POLL_INTERVAL=3600)):
        alice = await make_user("alice", ["1001"])
        first, data = await session(client_factory, alice.token)
        seq = data["seq"]["1001"]

        @database_sync_to_async
        def record_without_publishing() -> None:
            store.record({"1001": [account_parts("o", "1001", ["elsewhere"])]}, "default", 1000)

        await record_without_publishing()  # seen by the client on another process
        second, data = await session(client_factory, alice.token, **{"1001": seq + 1})
        assert data["seq"]["1001"] == seq  # this process is behind
        await anotify("next", login="1001")
        assert (await second.recv())[:3] == ["n", "1001", seq + 2]
        assert (await first.recv())[:3] == ["o", "1001", seq + 1]


async def test_in_band_refresh_does_not_replay_a_resume_again(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A resume in a refresh is ignored: the session already has those frames."""
    alice = await make_user("alice", ["1001"])
    client, _ = await session(client_factory, alice.token)
    await client.send({"authorization": alice.token, "resume": {"1001": 0}})
    assert (await client.recv())["event"] == "authorized"
    await client.send("ping")
    assert await client.recv_text() == "pong"
