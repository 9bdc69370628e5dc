"""The garbage collector kept off live sessions (broker_ws/session/collector.py), closed
sessions freed by reference counting, and database trips shared (broker_ws/session/batching.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from django.test import override_settings

from broker_ws.servers import daphne
from broker_ws.session.batching import Batcher
from broker_ws.session.collector import Collector
from tests.servers import deployment, obtain_token

PROBE = str(Path(__file__).resolve().parent / "gc_probe.py")


def _probe_report(proc: Any, report: Path, seen: int) -> dict[str, Any] | None:
    """Ask the probed server for a report; the new line, or None if not there yet."""
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = report.read_text().splitlines() if report.exists() else []
        if len(lines) > seen:
            return dict(json.loads(lines[seen]))
        time.sleep(0.05)
    return None


async def _sessions(host: str, token: str, count: int) -> None:
    """``count`` sessions authorize and subscribe, then close: half with a close
    frame, half by dropping TCP."""
    sessions = []
    for _ in range(count):
        ws = await websockets.connect(f"ws://{host}/", proxy=None)
        await ws.send(json.dumps({"authorization": token}))
        assert json.loads(await ws.recv())["event"] == "authorized"
        await ws.send(json.dumps({"event": "subscribe", "data": ["EURUSD"]}))
        sessions.append(ws)
    for index, ws in enumerate(sessions):
        if index % 2:
            ws.transport.abort()
        else:
            await ws.close()


async def _once_all_gone(proc: Any, report: Path) -> dict[str, Any]:
    """Probe reports until no daphne WebSocket protocol is alive (daphne reaps about
    a second after a close; broker_ws clears the protocol after that)."""
    seen = len(report.read_text().splitlines()) if report.exists() else 0
    deadline = time.monotonic() + 20
    while True:
        line = await asyncio.to_thread(_probe_report, proc, report, seen)
        assert line is not None, "the probe did not answer"
        seen += 1
        if line["live"] == 0 or time.monotonic() > deadline:
            return line
        await asyncio.sleep(0.5)


async def test_a_closed_daphne_session_is_freed_by_reference_counting(tmp_path: Path) -> None:
    """40 sessions authorize, subscribe and close (half with a close frame, half by
    dropping TCP): once daphne has let go of them, the cycle collector has freed none
    of their consumers, protocols, HTTP channels, requests or transports: reference
    counting did (each connection used to be a reference cycle, 68 objects).

    The first session of a process and plain HTTP requests (the token) are counted
    before: the upgrade hook is installed by the first session, after its own upgrade.
    """
    report = tmp_path / "gc.jsonl"
    with deployment("embedded", tmp_path) as dep:
        dep.env["BROKER_WS_JSON"] = json.dumps({"GC_FREEZE_EVERY": 0})
        host = dep.start_server("--no-feed", wrapper=[PROBE, str(report)])
        proc = dep.servers[0]
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        await _sessions(host, token, 1)
        before = await _once_all_gone(proc, report)
        assert before["live"] == 0, before
        await _sessions(host, token, 40)
        after = await _once_all_gone(proc, report)
        assert after["live"] == 0, after
    assert after["garbage"] == before["garbage"], (before, after)


# --- the freeze schedule ------------------------------------------------------------------


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Whatever a test freezes goes back to the collector afterwards."""
    yield
    gc.unfreeze()


@override_settings(BROKER_WS={"GC_FREEZE_EVERY": 3, "GC_RECLAIM_INTERVAL": 0})
async def test_every_n_session_events_freeze_what_survived_a_full_collection(
    unfrozen: None,
) -> None:
    collector = Collector()
    gc.unfreeze()
    for _ in range(2):
        collector.session_event()
    await asyncio.sleep(0)
    assert collector.freezes == 0 and gc.get_freeze_count() == 0
    kept = [object() for _ in range(10)]  # noqa: F841 - alive at the freeze
    garbage: list[Any] = []
    garbage.append(garbage)  # a cycle: the collection before the freeze frees it
    del garbage
    collector.session_event()
    await asyncio.sleep(0)
    assert collector.freezes == 1
    assert gc.get_freeze_count() > 0
    assert gc.collect() == 0  # nothing left that was not frozen and was garbage


@override_settings(BROKER_WS={"GC_FREEZE_EVERY": 1000, "GC_RECLAIM_INTERVAL": 0})
async def test_what_the_last_sessions_of_a_storm_left_is_frozen_once_they_stop(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("broker_ws.session.collector.SETTLE", 0.2)
    collector = Collector()
    for _ in range(5):
        collector.session_event()
        await asyncio.sleep(0.05)  # still coming: no freeze yet
    assert collector.freezes == 0
    async with asyncio.timeout(5):
        while collector.freezes == 0:
            await asyncio.sleep(0.02)
    assert collector.freezes == 1 and collector.opened_since_freeze == 0
    assert not collector.trimmed  # no session left meanwhile


@override_settings(BROKER_WS={"GC_FREEZE_EVERY": 1000, "GC_RECLAIM_INTERVAL": 0})
async def test_a_trickle_that_never_settles_is_frozen_within_settle_at_most(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions keep coming (a probe every 50 ms): the freeze still comes, and after
    many closes it gives free heap memory back."""
    monkeypatch.setattr("broker_ws.session.collector.SETTLE", 0.2)
    monkeypatch.setattr("broker_ws.session.collector.SETTLE_AT_MOST", 0.6)
    collector = Collector()
    for _ in range(1000):
        collector.session_closed()
    started = time.monotonic()
    async with asyncio.timeout(5):
        while collector.freezes == 0:
            collector.session_event()
            await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.6
    assert collector.trimmed == sys.platform.startswith("linux")  # glibc's malloc_trim
    assert collector.closed_since_trim == 0


@override_settings(BROKER_WS={"GC_FREEZE_EVERY": 0})
async def test_freeze_every_zero_leaves_the_collector_alone(unfrozen: None) -> None:
    gc.unfreeze()
    collector = Collector()
    for _ in range(500):
        collector.session_event()
    await asyncio.sleep(0.01)
    assert collector.freezes == 0 and gc.get_freeze_count() == 0


@override_settings(BROKER_WS={"GC_FREEZE_EVERY": 1, "GC_RECLAIM_INTERVAL": 0.2})
async def test_a_reclaim_frees_what_died_frozen_in_a_cycle(unfrozen: None) -> None:
    collector = Collector()
    doomed: list[Any] = []
    doomed.append(doomed)
    collector.session_event()
    await asyncio.sleep(0)
    assert collector.freezes == 1
    probe = [doomed]
    del doomed
    probe.clear()  # the cycle dies frozen: no collection sees it
    assert gc.collect() == 0
    async with asyncio.timeout(5):
        while collector.reclaims == 0:
            await asyncio.sleep(0.02)
    assert gc.get_freeze_count() > 0  # frozen again after the reclaim


# --- batched database trips ---------------------------------------------------------------


@pytest.mark.django_db  # database_sync_to_async closes old connections
async def test_what_is_asked_during_a_trip_goes_on_the_next_one_together() -> None:
    trips: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        trips.append(list(items))
        time.sleep(0.05)
        return [2 * item for item in items]

    batcher: Batcher[int, int] = Batcher(double, max_batch=3)
    first = asyncio.ensure_future(batcher.run(0))
    await asyncio.sleep(0.01)  # the first trip is under way
    rest = await asyncio.gather(*(batcher.run(i) for i in range(1, 6)))
    assert await first == 0 and rest == [2, 4, 6, 8, 10]
    assert trips == [[0], [1, 2, 3], [4, 5]]


@pytest.mark.django_db  # database_sync_to_async closes old connections
async def test_a_failed_item_or_a_caller_that_left_touches_no_other() -> None:
    def check(items: list[int]) -> list[int | BaseException]:
        time.sleep(0.05)
        return [ValueError(item) if item == 2 else item for item in items]

    batcher: Batcher[int, int] = Batcher(check)
    tasks = [asyncio.ensure_future(batcher.run(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[:3] == [0, 1, results[2]] and isinstance(results[2], ValueError)
    assert isinstance(results[3], asyncio.CancelledError)
    assert results[4] == 4


@pytest.mark.django_db  # database_sync_to_async closes old connections
async def test_a_trip_that_fails_as_a_whole_fails_only_its_own_items() -> None:
    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("down")
        return items

    batcher: Batcher[int, int] = Batcher(flaky)
    with pytest.raises(OSError):
        await batcher.run(1)
    assert await batcher.run(2) == 2  # the next trip runs


# --- autobahn's debug formatting ----------------------------------------------------------


def test_autobahn_no_longer_pretty_prints_what_it_does_not_log() -> None:
    import pprint

    import autobahn.websocket.protocol as protocol_module

    try:
        assert daphne.skip_autobahn_debug_pretty_printing()
        assert protocol_module.pformat([("a", 1)]) == "[('a', 1)]"
        assert protocol_module.pformat is not pprint.pformat
    finally:
        protocol_module.pformat = pprint.pformat  # type: ignore[attr-defined]
    # A module that no longer has the name is left as it is.
    saved = sys.modules.pop("autobahn.websocket.protocol")
    try:
        assert not daphne.skip_autobahn_debug_pretty_printing()
    finally:
        sys.modules["autobahn.websocket.protocol"] = saved
