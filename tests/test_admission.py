"""Admission of new connections before the upgrade (broker_ws/auth/admission.py), alone and
in front of a real daphne process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import websockets
from django.test import override_settings
from prometheus_client import REGISTRY

from broker_ws.auth.admission import Admission
from broker_ws.auth.throttle import MIN_HOLD, Throttle
from tests.conftest import broker_ws_settings
from tests.servers import deployment, obtain_token

WAIT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorded:
    """An arrival that remembers what the admission did with it, and when."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.outcome: asyncio.Future[tuple[str, float, int | None]] = loop.create_future()
        self._loop = loop

    def serve(self) -> None:
        self.outcome.set_result(("served", self._loop.time(), None))

    def refuse(self, retry_after: int) -> None:
        self.outcome.set_result(("refused", self._loop.time(), retry_after))


def _settings(**values: object) -> override_settings:
    return override_settings(BROKER_WS=broker_ws_settings(**values))


async def test_the_burst_is_served_at_once_then_the_queue_in_order_at_the_rate():
    with _settings(CONNECT_BURST_PER_ADDRESS=3, CONNECTS_PER_SECOND_PER_ADDRESS=20):
        admission = Admission(Throttle())
        assert [admission.admit_now("192.0.2.1") for _ in range(4)] == [True] * 3 + [False]
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = [Recorded(loop) for _ in range(5)]
        assert [admission.wait("192.0.2.1", a) for a in waiting] == ["queued"] * 5
        assert admission.queued("192.0.2.1") == 5 and not any(a.outcome.done() for a in waiting)
        # another address still has its whole burst
        assert admission.admit_now("192.0.2.2")
        # while some wait, a newcomer of the address does not jump the queue
        assert not admission.admit_now("192.0.2.1")
        outcomes = [await asyncio.wait_for(a.outcome, WAIT) for a in waiting]
        assert [kind for kind, _, _ in outcomes] == ["served"] * 5
        times = [when for _, when, _ in outcomes]
        assert times == sorted(times)
        # five turns at 20 a second take at least 0.2 s (the bucket was empty)
        assert times[-1] - started >= 0.2
        assert admission.queued() == 0


async def test_connections_past_the_queue_are_held_then_refused_with_retry_after():
    with _settings(
        CONNECT_BURST_PER_ADDRESS=1,
        CONNECTS_PER_SECOND_PER_ADDRESS=0.5,
        MAX_UNAUTHENTICATED_PER_ADDRESS=2,
    ):
        admission = Admission(Throttle())
        refused_before = REGISTRY.get_sample_value("broker_ws_connections_refused_total") or 0
        assert admission.admit_now("192.0.2.7")
        loop = asyncio.get_running_loop()
        arrivals = [Recorded(loop) for _ in range(4)]
        started = loop.time()
        verdicts = [admission.wait("192.0.2.7", a) for a in arrivals]
        assert verdicts == ["queued", "queued", "refused", "refused"]
        assert admission.held() == 2
        refused_now = REGISTRY.get_sample_value("broker_ws_connections_refused_total")
        assert refused_now == refused_before + 2
        for refused in arrivals[2:]:
            kind, when, retry_after = await asyncio.wait_for(refused.outcome, WAIT)
            assert kind == "refused" and retry_after is not None and retry_after >= 1
            assert when - started >= MIN_HOLD * 0.99
        assert admission.held() == 0
        assert not arrivals[1].outcome.done()  # 0.5 a second: the second is still waiting


async def test_an_address_with_all_its_unauthenticated_sessions_waits_for_one_to_end():
    """Serving it would only get it a 4006 after a full handshake."""
    throttle = Throttle()
    with _settings(MAX_UNAUTHENTICATED_PER_ADDRESS=2):
        admission = Admission(throttle)
        assert throttle.admit("192.0.2.8") and throttle.admit("192.0.2.8")
        assert not admission.admit_now("192.0.2.8")
        loop = asyncio.get_running_loop()
        arrival = Recorded(loop)
        assert admission.wait("192.0.2.8", arrival) == "queued"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(arrival.outcome), 0.3)
        throttle.release("192.0.2.8")  # one authorized
        kind, _, _ = await asyncio.wait_for(arrival.outcome, WAIT)
        assert kind == "served"


def test_the_rate_of_an_address_shrinks_with_its_failures_past_the_burst():
    clock = Clock()
    throttle = Throttle(clock)
    with _settings(CONNECTS_PER_SECOND_PER_ADDRESS=1000, AUTH_FAILURE_BURST=10):
        admission = Admission(throttle, clock)
        for _ in range(10):
            throttle.fail("192.0.2.9")
        assert admission.rate("192.0.2.9") == 1000
        for _ in range(90):
            throttle.fail("192.0.2.9")
        assert admission.rate("192.0.2.9") == pytest.approx(100)
        assert admission.rate("192.0.2.10") == 1000


def test_trusted_proxies_and_a_zero_rate_are_not_decided_here():
    with _settings(TRUSTED_PROXIES=["10.0.0.0/8"]):
        admission = Admission(Throttle())
        assert not admission.applies_to("10.1.2.3")
        assert admission.applies_to("192.0.2.1")
    with _settings(CONNECTS_PER_SECOND_PER_ADDRESS=0):
        assert not Admission(Throttle()).applies_to("192.0.2.1")


_UPGRADE = (
    "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def _upgrade_from(source: str, host: str, started: float) -> tuple[float, bytes]:
    """Open a connection from ``source``, ask for an upgrade; the status line and when."""
    address, port = host.split(":")
    reader, writer = await asyncio.open_connection(address, int(port), local_addr=(source, 0))
    try:
        writer.write(_UPGRADE.format(host=host).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        return time.monotonic() - started, head
    finally:
        writer.close()


@pytest.mark.django_db(transaction=True)
async def test_daphne_paces_one_address_and_refuses_past_its_cap_with_429(tmp_path: Path):
    """40 upgrades at once from 127.0.0.2 against daphne with a burst of 5, 10 a second
    and room for 20: the first ones are upgraded at once, the queue is upgraded at the
    rate, the rest get 429 with Retry-After after at least a second, and a client of
    another address is authorized meanwhile without waiting its turn."""
    limits = {
        "CONNECT_BURST_PER_ADDRESS": 5,
        "CONNECTS_PER_SECOND_PER_ADDRESS": 10,
        "MAX_UNAUTHENTICATED_PER_ADDRESS": 20,
    }
    with deployment("embedded", tmp_path) as dep:
        dep.env["BROKER_WS_JSON"] = json.dumps(limits)
        host = dep.start_server("--no-feed")
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        # the first WebSocket connection of a daphne process puts the admission in place
        async with websockets.connect(f"ws://{host}/", proxy=None) as first:
            await first.send(json.dumps({"authorization": token}))
            assert json.loads(await first.recv())["event"] == "authorized"
        started = time.monotonic()
        flood = [asyncio.create_task(_upgrade_from("127.0.0.2", host, started)) for _ in range(40)]
        async with websockets.connect(f"ws://{host}/", proxy=None) as good:
            await good.send(json.dumps({"authorization": token}))
            assert json.loads(await good.recv())["event"] == "authorized"
        good_done = time.monotonic() - started
        answers = sorted(await asyncio.gather(*flood))
        upgraded = [when for when, head in answers if head.startswith(b"HTTP/1.1 101")]
        refused = [(when, head) for when, head in answers if head.startswith(b"HTTP/1.1 429")]
        assert len(upgraded) + len(refused) == 40, answers
        assert 5 <= len(upgraded) <= 25 and refused, answers
        for when, head in refused:
            assert b"\r\nRetry-After: " in head
            assert when >= MIN_HOLD * 0.99
        # paced: the n-th upgrade past the burst came no sooner than the rate allows
        for n, when in enumerate(upgraded[5:], start=1):
            assert when >= (n - 1) / 10, upgraded
        # the good client did not wait behind 127.0.0.2's queue
        assert good_done < upgraded[-1], (good_done, upgraded)


@pytest.mark.django_db(transaction=True)
async def test_held_connections_are_freed_by_reference_counting(tmp_path: Path):
    """Connections queued and refused at the accept leave nothing to the cycle
    collector: a held connection and its Twisted transport refer to each other until
    Twisted lets go of the protocol when the connection is lost, so a flood's held
    connections are freed as they end, not by a later full collection (which the
    collector's freeze would put off by an hour)."""
    from tests.test_collector import PROBE, _once_all_gone

    report = tmp_path / "gc.jsonl"
    limits = {
        "GC_FREEZE_EVERY": 0,
        "CONNECT_BURST_PER_ADDRESS": 1,
        "CONNECTS_PER_SECOND_PER_ADDRESS": 20,
        "MAX_UNAUTHENTICATED_PER_ADDRESS": 5,
    }
    with deployment("embedded", tmp_path) as dep:
        dep.env["BROKER_WS_JSON"] = json.dumps(limits)
        host = dep.start_server("--no-feed", wrapper=[PROBE, str(report)])
        proc = dep.servers[0]
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        async with websockets.connect(f"ws://{host}/", proxy=None) as first:
            await first.send(json.dumps({"authorization": token}))
            assert json.loads(await first.recv())["event"] == "authorized"
        before = await _once_all_gone(proc, report)
        started = time.monotonic()
        answers = await asyncio.gather(
            *(_upgrade_from("127.0.0.2", host, started) for _ in range(20))
        )
        heads = [head.split(b"\r\n")[0] for _, head in answers]
        assert b"HTTP/1.1 429 Too Many Requests" in heads, heads
        after = await _once_all_gone(proc, report)
    for kind in (
        "broker_ws.servers.daphne._held_connection_class.<locals>.HeldConnection",
        "twisted.internet.tcp.Server",
    ):
        assert after["garbage"].get(kind, 0) == before["garbage"].get(kind, 0), (before, after)


def test_buckets_of_many_active_addresses_are_not_swept_on_every_new_one(monkeypatch):
    monkeypatch.setattr("broker_ws.auth.admission.SWEEP_AT", 10)
    clock = Clock()
    admission = Admission(Throttle(clock), clock)
    sweeps = 0
    original = admission._sweep

    def counted(now: float, burst: float) -> None:
        nonlocal sweeps
        sweeps += 1
        original(now, burst)

    monkeypatch.setattr(admission, "_sweep", counted)
    with _settings(CONNECT_BURST_PER_ADDRESS=2, CONNECTS_PER_SECOND_PER_ADDRESS=0.001):
        for n in range(100):  # each takes one of its two: not full, not swept
            assert admission.admit_now(f"192.0.2.{n}")
    assert sweeps <= 4, sweeps
