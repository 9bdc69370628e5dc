"""Throttling unauthenticated sockets and failed authorizations (broker_ws/auth/throttle.py)."""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from broker_ws.auth.throttle import HALF_LIFE, MIN_HOLD, Throttle, client_address
from tests.conftest import Client, broker_ws_settings

pytestmark = pytest.mark.django_db(transaction=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_answers_the_burst_at_once_then_doubles_the_delay_up_to_the_maximum():
    """AUTH_FAILURE_BURST failures cost nothing; each one after doubles the delay,
    from 0.1 s, and no delay exceeds AUTH_FAILURE_MAX_DELAY."""
    with override_settings(
        BROKER_WS=broker_ws_settings(AUTH_FAILURE_BURST=3, AUTH_FAILURE_MAX_DELAY=1.0)
    ):
        throttle = Throttle(Clock())
        delays = [throttle.fail("10.0.0.1") for _ in range(10)]
    assert delays[:3] == [0.0, 0.0, 0.0]
    assert delays[3:7] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert delays[7:] == [1.0, 1.0, 1.0]


def test_throttle_scores_fade_by_half_every_half_life_and_per_address():
    """A score halves every HALF_LIFE seconds; another address has its own."""
    clock = Clock()
    throttle = Throttle(clock)
    for _ in range(8):
        throttle.fail("10.0.0.1")
    clock.now += HALF_LIFE
    assert throttle.score("10.0.0.1") == pytest.approx(4.0)
    assert throttle.score("10.0.0.2") == 0.0


def test_throttle_admits_up_to_the_cap_per_address_and_in_all():
    """At most MAX_UNAUTHENTICATED_PER_ADDRESS per address and MAX_UNAUTHENTICATED in
    all; a released slot is free again."""
    with override_settings(
        BROKER_WS=broker_ws_settings(MAX_UNAUTHENTICATED_PER_ADDRESS=2, MAX_UNAUTHENTICATED=3)
    ):
        throttle = Throttle(Clock())
        assert [throttle.admit("a") for _ in range(3)] == [True, True, False]
        assert throttle.admit("b") is True
        assert throttle.admit("c") is False  # the process-wide cap
        throttle.release("a")
        assert throttle.admit("c") is True
        assert throttle.unauthenticated() == 3
        assert throttle.hold("a") == MIN_HOLD


def scope(peer: str, forwarded: str | None = None) -> dict:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {"client": (peer, 5555), "headers": headers}


def test_client_address_believes_forwarded_for_only_from_trusted_proxies():
    """Without TRUSTED_PROXIES the peer counts, whatever X-Forwarded-For says; from a
    trusted proxy, the rightmost address that is not a trusted proxy counts."""
    assert client_address(scope("203.0.113.9", "1.2.3.4")) == "203.0.113.9"
    with override_settings(BROKER_WS=broker_ws_settings(TRUSTED_PROXIES=["10.0.0.0/8"])):
        assert client_address(scope("10.1.1.1", "6.6.6.6, 198.51.100.7")) == "198.51.100.7"
        assert client_address(scope("10.1.1.1", "198.51.100.7, 10.2.2.2")) == "198.51.100.7"
        assert client_address(scope("203.0.113.9", "1.2.3.4")) == "203.0.113.9"
        assert client_address(scope("10.1.1.1", "not-an-address")) == "10.1.1.1"
        assert client_address(scope("10.1.1.1")) == "10.1.1.1"


async def client_from(address: str) -> Client:
    client = Client()
    client.ws.scope["client"] = (address, 40000)
    await client.connect()
    return client


async def test_failed_authorizations_of_one_address_are_answered_late_others_at_once():
    """Past the burst, an address's bad tokens are answered (auth_failed, 4001) only
    after the delay; a bad token from another address is answered at once."""
    settings = broker_ws_settings(AUTH_FAILURE_BURST=2, AUTH_FAILURE_MAX_DELAY=0.8)
    with override_settings(BROKER_WS=settings):
        loop = asyncio.get_running_loop()
        took = []
        for _ in range(4):
            client = await client_from("192.0.2.1")
            started = loop.time()
            await client.send({"authorization": "garbage"})
            reply = await client.recv()
            assert reply["data"]["code"] == "auth_failed", reply
            assert await client.recv_close() == 4001
            took.append(loop.time() - started)
        other = await client_from("192.0.2.2")
        started = loop.time()
        await other.send({"authorization": "garbage"})
        assert (await other.recv())["data"]["code"] == "auth_failed"
        other_took = loop.time() - started
    assert max(took[:2]) < 0.1, took
    assert took[2] >= 0.1 and took[3] >= 0.2, took
    assert other_took < 0.1


async def test_sockets_over_the_unauthenticated_cap_are_held_then_closed_4006(make_user):
    """With two unauthenticated sockets of an address open, a third is held at least a
    second, then gets rate_limited and 4006; once one authorizes, a new one is admitted."""
    user = await make_user("frank", ["5001"])
    with override_settings(BROKER_WS=broker_ws_settings(MAX_UNAUTHENTICATED_PER_ADDRESS=2)):
        first, second = await client_from("192.0.2.5"), await client_from("192.0.2.5")
        loop = asyncio.get_running_loop()
        started = loop.time()
        third = await client_from("192.0.2.5")
        await third.send("ping")  # not read while held
        reply = await third.recv(timeout=MIN_HOLD + 2)
        assert reply["data"]["code"] == "rate_limited", reply
        assert loop.time() - started >= MIN_HOLD
        assert await third.recv_close() == 4006
        await first.authorize(user.token)
        fourth = await client_from("192.0.2.5")
        await fourth.authorize(user.token)
        for client in (first, second, fourth):
            await client.close()


def test_a_failure_from_many_addresses_does_not_walk_them_all_each_time(monkeypatch):
    """Past SWEEP_AT scored addresses that are all still failing, a sweep frees
    nothing; the next one waits until there are twice as many (it ran on every new
    address, a walk of all of them per failure under a flood from many)."""
    monkeypatch.setattr("broker_ws.auth.throttle.SWEEP_AT", 10)
    throttle = Throttle(Clock())
    sweeps = 0
    original = throttle._sweep

    def counted() -> None:
        nonlocal sweeps
        sweeps += 1
        original()

    monkeypatch.setattr(throttle, "_sweep", counted)
    for n in range(100):
        throttle.fail(f"192.0.2.{n}")
    assert sweeps <= 4, sweeps  # at 10, 20, 40, 80
    assert all(throttle.score(f"192.0.2.{n}") > 0 for n in range(100))
