"""The host's own client commands: a handler per event name, replies that repeat the
request's id, error codes of the host's, and a session that survives whatever a handler
does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.checks import run_checks
from django.db import OperationalError
from django.test import override_settings

from broker_ws.auth.identity import Identity
from broker_ws.exceptions import CommandError, ConfigurationError
from broker_ws.session.commands import command, unregister
from project.broker.models import Trade
from tests.conftest import broker_ws_settings

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def handlers() -> Iterator[dict[str, Any]]:
    """Handlers registered for the test, forgotten afterwards."""
    registered: dict[str, Any] = {}

    def register(name: str, handler: Any) -> None:
        command(name, handler)
        registered[name] = handler

    yield {"register": register}
    for name in registered:
        unregister(name)


async def authorized(client_factory: Any, make_user: Any, logins: list[str]) -> Any:
    user = await make_user("alice", logins)
    client = await client_factory()
    await client.authorize(user.token)
    return client


async def test_a_command_is_answered_with_its_data_and_the_requests_id(
    client_factory: Any, make_user: Any, handlers: dict[str, Any]
) -> None:
    """The handler gets the session's identity and the message's data; the reply
    repeats the event and the id (string or integer), and has no id when none came."""
    seen: list[tuple[Identity, Any]] = []

    async def echo(identity: Identity, data: Any) -> Any:
        seen.append((identity, data))
        return {"echo": data, "logins": list(identity.logins)}

    handlers["register"]("echo", echo)
    client = await authorized(client_factory, make_user, ["1001", "1002"])
    await client.send({"event": "echo", "id": "c-1", "data": {"x": [1, 2]}})
    assert await client.recv() == {
        "event": "echo",
        "id": "c-1",
        "data": {"echo": {"x": [1, 2]}, "logins": ["1001", "1002"]},
    }
    await client.send({"event": "echo", "id": 7, "data": 3})
    assert await client.recv() == {
        "event": "echo",
        "id": 7,
        "data": {"echo": 3, "logins": ["1001", "1002"]},
    }
    await client.send({"event": "echo"})
    assert await client.recv() == {
        "event": "echo",
        "data": {"echo": None, "logins": ["1001", "1002"]},
    }
    assert seen[0][0].username == "alice"


async def test_a_command_error_is_an_error_reply_with_the_hosts_code(
    client_factory: Any, make_user: Any, handlers: dict[str, Any]
) -> None:
    def refuse(identity: Identity, data: Any) -> Any:
        raise CommandError(
            "insufficient_margin", "not enough free margin", free=12.5, event="spoof"
        )

    handlers["register"]("place", refuse)
    client = await authorized(client_factory, make_user, ["1001"])
    await client.send({"event": "place", "id": "o-9", "data": {}})
    assert await client.recv() == {
        "event": "error",
        "id": "o-9",
        "data": {
            "free": 12.5,
            "code": "insufficient_margin",
            "message": "not enough free margin",
            "event": "place",
        },
    }
    await client.send("ping")
    assert await client.recv_text() == "pong"


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (ValueError("a bug in the host's handler"), "internal_error"),
        (CommandError("Not A Code!", "bad code"), "internal_error"),
        (OperationalError("could not connect to server: host db1 port 5432"), "unavailable"),
    ],
)
async def test_a_handler_that_fails_gets_a_documented_reply_and_the_session_stays(
    client_factory: Any, make_user: Any, handlers: dict[str, Any], failure: Exception, code: str
) -> None:
    """A bug is internal_error, a database failure unavailable: never the exception's
    text, never a 1011 or a closed session."""

    async def broken(identity: Identity, data: Any) -> Any:
        raise failure

    handlers["register"]("broken", broken)
    client = await authorized(client_factory, make_user, ["1001"])
    await client.send({"event": "broken", "id": 1})
    reply = await client.recv()
    assert reply["event"] == "error" and reply["id"] == 1
    assert reply["data"]["code"] == code
    assert "5432" not in reply["data"]["message"] and "bug" not in reply["data"]["message"]
    await client.send({"event": "subscribe", "data": ["EURUSD"]})
    assert (await client.recv())["event"] == "subscribed"


async def test_commands_run_beside_the_stream_and_at_most_the_limit_at_once(
    client_factory: Any, make_user: Any, handlers: dict[str, Any]
) -> None:
    """While handlers wait, pings are answered; one more than MAX_PENDING_COMMANDS is
    too_many_pending, and the waiting ones are answered once they finish."""
    release = asyncio.Event()

    async def slow(identity: Identity, data: Any) -> Any:
        await release.wait()
        return data

    handlers["register"]("slow", slow)
    with override_settings(BROKER_WS=broker_ws_settings(MAX_PENDING_COMMANDS=2)):
        client = await authorized(client_factory, make_user, ["1001"])
        for request_id in (1, 2, 3):
            await client.send({"event": "slow", "id": request_id, "data": request_id})
        refused = await client.recv()
        assert refused["id"] == 3 and refused["data"]["code"] == "too_many_pending"
        await client.send("ping")
        assert await client.recv_text() == "pong"
        release.set()
        answers = [await client.recv(), await client.recv()]
        assert sorted(a["id"] for a in answers) == [1, 2]
        await client.send({"event": "slow", "id": 4, "data": 4})
        assert (await client.recv())["id"] == 4


async def test_commands_count_against_the_message_rate_like_every_message(
    client_factory: Any, make_user: Any, handlers: dict[str, Any]
) -> None:
    handlers["register"]("noop", lambda identity, data: None)
    with override_settings(BROKER_WS=broker_ws_settings(MAX_MESSAGES_PER_SECOND=2)):
        client = await authorized(client_factory, make_user, ["1001"])
        for request_id in range(10):
            await client.send({"event": "noop", "id": request_id})
        assert await client.recv_close() == 4006


async def test_requests_before_authorization_unknown_events_and_bad_ids(
    client_factory: Any, make_user: Any, handlers: dict[str, Any]
) -> None:
    handlers["register"]("noop", lambda identity, data: "done")
    client = await client_factory()
    await client.send({"event": "noop", "id": "a"})
    reply = await client.recv()
    assert (reply["id"], reply["data"]["code"]) == ("a", "not_authorized")
    await client.send({"event": "nothing_here", "id": "b"})
    reply = await client.recv()
    assert (reply["id"], reply["data"]["code"], reply["data"]["event"]) == (
        "b",
        "unknown_event",
        "nothing_here",
    )
    for bad_id in (True, {"a": 1}, [1], 1.5, "x" * 65, 2**60):
        await client.send({"event": "noop", "id": bad_id})
        reply = await client.recv()
        assert reply["data"]["code"] == "bad_message" and "id" not in reply, bad_id
    user = await make_user("bob", ["2001"])
    await client.authorize(user.token)
    await client.send({"event": "noop", "id": "c"})
    assert await client.recv() == {"event": "noop", "id": "c", "data": "done"}


async def test_the_demo_commands_place_and_close_a_trade_of_the_sessions_login(
    client_factory: Any, make_user: Any
) -> None:
    """A sync handler from BROKER_WS["COMMANDS"] works with the database: the trade's
    own frame arrives through its binding, and another user's login is refused."""
    client = await authorized(client_factory, make_user, ["1001"])
    order = {"login": "1001", "symbol": "EURUSD", "side": "buy", "volume": 0.5, "price": 1.085}
    await client.send({"event": "place_order", "id": 1, "data": order})
    got = [await client.recv(), await client.recv()]
    reply = next(f for f in got if isinstance(f, dict))
    frame = next(f for f in got if isinstance(f, list))
    ticket = reply["data"]["ticket"]
    assert reply == {"event": "place_order", "id": 1, "data": {"ticket": ticket, "status": "open"}}
    assert frame[0:4] == ["o", "1001", frame[2], ticket] and frame[10] == "open"
    await client.send(
        {
            "event": "close_trade",
            "id": 2,
            "data": {"login": "1001", "ticket": ticket, "price": 1.086},
        }
    )
    reply = await client.wait_for(lambda f: isinstance(f, dict))
    assert reply == {"event": "close_trade", "id": 2, "data": {"ticket": ticket, "profit": 50.0}}
    await client.send({"event": "place_order", "id": 3, "data": {**order, "login": "2001"}})
    reply = await client.wait_for(lambda f: isinstance(f, dict))
    assert (reply["id"], reply["data"]["code"]) == (3, "unknown_login")
    assert await database_sync_to_async(Trade.objects.filter(account__login="2001").count)() == 0


def test_protocol_events_cannot_be_commands_and_the_setting_is_checked() -> None:
    for name in ("subscribe", "authorization", "error", "Bad Name", "", "x" * 65):
        with pytest.raises(ConfigurationError):
            command(name, lambda identity, data: None)
    with override_settings(
        BROKER_WS=broker_ws_settings(
            COMMANDS={"subscribe": "project.broker.commands.place_order", "ok": "no.such.thing"}
        )
    ):
        ids = [m.id for m in run_checks() if m.id and m.id.startswith("broker_ws.")]
    assert ids == ["broker_ws.E014", "broker_ws.E014"]
