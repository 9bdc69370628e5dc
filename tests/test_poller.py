"""The outbox poll thread of a server process (:mod:`broker_ws.outbox.poller`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import DatabaseError
from django.test import override_settings

from broker_ws.models import AccountEvent
from broker_ws.outbox import poller, tails
from tests.conftest import broker_ws_settings

pytestmark = pytest.mark.django_db(transaction=True)

FAST = broker_ws_settings(OUTBOX_POLL_INTERVAL=0.02)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until ``predicate()`` holds, or fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class Recorder:
    """Wraps ``tails.read`` and collects what the poller hands to the loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_first: int = 0) -> None:
        self.readers: list[threading.Thread] = []
        self.delivered: list[tuple[threading.Thread, poller.Batches]] = []
        self._fail_first = fail_first
        real_read = tails.read

        def read(followed: tuple[tails.Tail, ...]) -> poller.Batches:
            self.readers.append(threading.current_thread())
            if len(self.readers) <= self._fail_first:
                raise DatabaseError("database is locked")
            return real_read(followed)

        monkeypatch.setattr(tails, "read", read)

    def deliver(self, batches: poller.Batches) -> None:
        self.delivered.append((threading.current_thread(), batches))


@database_sync_to_async
def started_tails() -> tuple[tails.Tail, ...]:
    followed = tails.followed()
    tails.start(followed)
    return followed


@database_sync_to_async
def new_event(login: str, seq: int) -> int:
    return int(AccountEvent.objects.create(login=login, seq=seq, frame="[]").id)


async def test_reads_run_in_a_thread_of_their_own_and_wake_the_loop_only_with_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder(monkeypatch)
    followed = await started_tails()
    loop = asyncio.get_running_loop()
    with override_settings(BROKER_WS=FAST):
        polls = poller.OutboxPoller(loop, lambda: followed, lambda: True, recorder.deliver)
        polls.start()
        try:
            # Reads 1-3 found nothing; any delivery of theirs was scheduled
            # before read 4 began and has run by the time the loop sees it.
            await until(lambda: len(recorder.readers) >= 4)
            assert recorder.delivered == []
            event_id = await new_event("7001", 1)
            await until(lambda: bool(recorder.delivered))
        finally:
            await polls.stop()
    thread, batches = recorder.delivered[0]
    assert thread is threading.main_thread()  # handed to the event loop's thread
    assert batches == [[(event_id, "7001", 1)], [], []]
    assert len(recorder.delivered) == 1
    assert {reader.name for reader in recorder.readers} == {"broker_ws-outbox"}
    assert len(set(recorder.readers)) == 1


async def test_a_failed_read_is_logged_and_the_same_rows_read_at_the_next_poll(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(monkeypatch, fail_first=2)
    followed = await started_tails()
    event_id = await new_event("7001", 1)
    with override_settings(BROKER_WS=FAST), caplog.at_level(logging.WARNING, "broker_ws"):
        polls = poller.OutboxPoller(
            asyncio.get_running_loop(), lambda: followed, lambda: True, recorder.deliver
        )
        polls.start()
        try:
            await until(lambda: bool(recorder.delivered))
        finally:
            await polls.stop()
    assert len(recorder.readers) >= 3
    assert [batches for _, batches in recorder.delivered] == [[[(event_id, "7001", 1)], [], []]]
    # Logged when reads start failing and when they work again, not at every poll.
    assert [r.getMessage() for r in caplog.records] == [
        "broker_ws: reading the outbox failed (database is locked); retrying",
        "broker_ws: reading the outbox works again",
    ]


async def test_nothing_is_read_before_tails_are_followed_or_without_sessions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder(monkeypatch)
    followed = await started_tails()
    state: dict[str, Any] = {"tails": None, "active": True, "asked": 0, "looked": 0}

    def tails_now() -> tuple[tails.Tail, ...] | None:
        state["looked"] += 1
        return state["tails"]  # type: ignore[no-any-return]

    def active() -> bool:
        state["asked"] += 1
        return bool(state["active"])

    with override_settings(BROKER_WS=FAST):
        polls = poller.OutboxPoller(asyncio.get_running_loop(), tails_now, active, recorder.deliver)
        polls.start()
        try:
            await until(lambda: state["looked"] >= 3)
            assert state["asked"] == 0 and recorder.readers == []
            state.update(tails=followed, active=False)
            await until(lambda: state["asked"] >= 3)
            assert recorder.readers == []
            state["active"] = True
            await until(lambda: bool(recorder.readers))
        finally:
            await polls.stop()


async def test_stop_wakes_the_thread_from_a_long_interval_and_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = Recorder(monkeypatch)
    followed = await started_tails()
    with override_settings(BROKER_WS=broker_ws_settings(OUTBOX_POLL_INTERVAL=3600)):
        polls = poller.OutboxPoller(
            asyncio.get_running_loop(), lambda: followed, lambda: True, recorder.deliver
        )
        polls.start()
        polls.poll_now()
        await until(lambda: bool(recorder.readers))  # poll_now did not wait an hour
        async with asyncio.timeout(poller.STOP_TIMEOUT):
            await polls.stop()
    assert not polls._thread.is_alive()
    assert len(recorder.readers) == 1


async def test_the_thread_outlives_an_unexpected_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Anything raised in a poll is logged and the next poll happens: a dead poll
    thread would silently stop frames the bus missed from ever arriving."""
    recorder = Recorder(monkeypatch)
    followed = await started_tails()
    looked: list[int] = []

    def followed_once_broken() -> tuple[tails.Tail, ...]:
        looked.append(1)
        if len(looked) == 1:
            raise KeyError("boom")
        return followed

    with override_settings(BROKER_WS=FAST), caplog.at_level(logging.ERROR, "broker_ws"):
        polls = poller.OutboxPoller(
            asyncio.get_running_loop(), followed_once_broken, lambda: True, recorder.deliver
        )
        polls.start()
        try:
            await until(lambda: bool(recorder.readers))
        finally:
            await polls.stop()
    assert [r.getMessage() for r in caplog.records] == [
        "broker_ws: the outbox poll failed; retrying"
    ]


@pytest.mark.parametrize(("max_age", "kept"), [(300, True), (0, False)])
async def test_the_connection_is_kept_between_polls_as_conn_max_age_says(
    monkeypatch: pytest.MonkeyPatch, max_age: int, kept: bool
) -> None:
    """With ``CONN_MAX_AGE`` the poll keeps its connection (no connect, and no health
    check, per poll); with 0 it closes it after each read, as Django does per request.
    (The test database is SQLite in memory, whose wrapper ignores ``close()``: the
    calls are counted.)"""
    from django.db import connections

    wrapper_type = type(connections["default"])
    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", max_age)
    monkeypatch.setitem(connections["default"].settings_dict, "CONN_HEALTH_CHECKS", True)
    reads: list[int] = []
    closes: list[int] = []
    checks: list[int] = []
    real_read, real_close, real_usable = tails.read, wrapper_type.close, wrapper_type.is_usable

    def read(followed: tuple[tails.Tail, ...]) -> poller.Batches:
        reads.append(1)
        return real_read(followed)

    def close(self: Any) -> None:
        if threading.current_thread().name == "broker_ws-outbox" and not stopping:
            closes.append(1)
        real_close(self)

    def is_usable(self: Any) -> bool:
        if threading.current_thread().name == "broker_ws-outbox":
            checks.append(1)
        return bool(real_usable(self))

    monkeypatch.setattr(tails, "read", read)
    monkeypatch.setattr(wrapper_type, "close", close)
    monkeypatch.setattr(wrapper_type, "is_usable", is_usable)
    stopping = False
    followed = await started_tails()
    with override_settings(BROKER_WS=FAST):
        polls = poller.OutboxPoller(
            asyncio.get_running_loop(), lambda: followed, lambda: True, lambda batches: None
        )
        polls.start()
        try:
            await until(lambda: len(reads) >= 4)
        finally:
            stopping = True
            await polls.stop()
    if kept:
        assert closes == []
        assert len(checks) <= 1, "a health check on every poll"
    else:
        assert len(closes) >= 3
