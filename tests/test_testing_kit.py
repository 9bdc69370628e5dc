"""broker_ws.testing: the protocol v1 client and the isolated bus a host tests with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import broker_ws
from broker_ws.testing import StreamClient, isolated_bus
from tests.conftest import REDIS_URL
from tests.servers import deployment, obtain_token

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_host_tests_its_account_stream_in_a_few_lines(make_user: Any) -> None:
    """The guide's example: authorize, wait for the frame a save sends, and see
    that nothing else arrives."""
    user = await make_user("kit", ["8101"])
    async with isolated_bus(), StreamClient() as client:
        data = await client.authorize(user.token)
        await broker_ws.apush("8101", "o", ["order 1 filled"])
        frame = await client.wait_for(lambda f: f[0] == "o" and f[1] == "8101")
        assert frame == ["o", "8101", data["seq"]["8101"] + 1, "order 1 filled"]
        await client.assert_nothing(within=0.2)


async def test_assert_nothing_fails_on_a_matching_frame_and_skips_the_others(
    make_user: Any,
) -> None:
    user = await make_user("kit2", ["8102"])
    async with isolated_bus(), StreamClient() as client:
        await client.authorize(user.token)
        await broker_ws.apush("8102", "o", ["first"])
        await client.assert_nothing(within=0.3, matching=lambda f: f[0] == "b")
        await broker_ws.apush("8102", "o", ["second"])
        with pytest.raises(AssertionError, match="second"):
            await client.assert_nothing(within=2.0)


async def test_wait_for_times_out_and_reports_a_close(make_user: Any) -> None:
    """A wait that times out leaves the session usable; a close is reported with its code."""
    user = await make_user("kit3", ["8103"])
    async with isolated_bus(), StreamClient() as client:
        await client.authorize(user.token)
        with pytest.raises(TimeoutError):
            await client.wait_for(lambda f: f[0] == "b", timeout=0.2)
        await client.send("ping")
        assert await client.recv_text() == "pong"
    async with isolated_bus(), StreamClient() as client:
        await client.send({"authorization": "not a token"})
        with pytest.raises(AssertionError, match="closed the session with 4001"):
            await client.wait_for(lambda f: False)


@pytest.mark.parametrize("redis", [False, True], ids=["memory", "redis"])
async def test_isolated_buses_do_not_see_each_others_quotes(make_user: Any, redis: bool) -> None:
    """A last quote published under one isolated bus is no snapshot under the next."""
    overrides = {"REDIS_URL": REDIS_URL} if redis else {"REDIS_URL": None}
    user = await make_user("kit4", ["8104"])
    async with isolated_bus(**overrides) as first_prefix:
        await broker_ws.apublish_quote("KIT/USD", 1.0, 1.5, ts=1)
        async with StreamClient() as client:
            await client.authorize(user.token)
            await client.subscribe("KIT/USD")
            assert await client.recv() == ["t", "KIT/USD", 1.0, 1.5, 1]
    async with isolated_bus(**overrides) as second_prefix, StreamClient() as client:
        assert second_prefix != first_prefix
        await client.authorize(user.token)
        await client.subscribe("KIT/USD")
        await client.assert_nothing(within=0.3)


async def test_the_client_speaks_to_a_running_server_by_url(tmp_path: Path) -> None:
    with deployment("embedded", tmp_path) as demo:
        host = demo.start_server("--rate", "20", "--symbols", "EUR/USD")
        token = obtain_token(host, "alice", "alice-demo-pass")["access"]
        async with StreamClient(f"ws://{host}/") as client:
            data = await client.authorize(token)
            assert "1001" in data["seq"]
            await client.subscribe("EUR/USD")
            quote = await client.wait_for(lambda f: f[0] == "t", timeout=10)
            assert quote[1] == "EUR/USD" and quote[2] < quote[3]
        async with StreamClient(f"ws://{host}/") as refused:
            await refused.send({"authorization": "not a token"})
            assert await refused.recv_close(timeout=10) == 4001
