"""Authorization under concurrency and slow dependencies (the session state machine).

The hub's work for a login new to the process (subscribe to its bus channel,
read its current seq) is shared by every session of that login that
authorizes meanwhile. These tests make that window long for real: a private
``redis-server`` (tests/services.py) is stopped with SIGSTOP, so the
subscription is never confirmed until it resumes; nothing is mocked.
"""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from broker_ws import metrics
from broker_ws.session.hub import get_hub
from tests.conftest import TIMEOUT, Client, broker_ws_settings
from tests.services import PrivateRedis

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stalled_redis():
    """BROKER_WS on a private Redis; ``redis.stall()`` / ``redis.resume()`` in the test."""
    with (
        PrivateRedis() as redis,
        override_settings(BROKER_WS=broker_ws_settings(REDIS_URL=redis.url)),
    ):
        yield redis


async def connect(n: int) -> list[Client]:
    clients = [Client() for _ in range(n)]
    await asyncio.gather(*(client.connect() for client in clients))
    return clients


async def start_hub_while_redis_is_up() -> None:
    """A hub that connected before the stall, as on a server that was running."""
    hub = await get_hub()
    async with asyncio.timeout(TIMEOUT):
        while not hub.subscriber._reachable:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)


async def test_a_client_cancelled_mid_authorization_ends_no_other_session(stalled_redis, make_user):
    """20 sessions of a login new to the process authorize while its bus subscription
    hangs; the first one's task is cancelled (its client left). The other 19 all get
    ``authorized`` once Redis answers: none inherits the cancellation."""
    user = await make_user("carol", ["3001"])
    await start_hub_while_redis_is_up()
    clients = await connect(20)
    stalled_redis.stall()
    for client in clients:
        await client.send({"authorization": user.token})
    await asyncio.sleep(0.3)  # every session is waiting on the shared read now
    clients[0].ws.future.cancel()
    stalled_redis.resume()
    replies = await asyncio.gather(*(client.recv() for client in clients[1:]))
    assert [reply["event"] for reply in replies] == ["authorized"] * 19, replies
    hub = await get_hub()
    assert hub.sessions_of("3001") == 19
    for client in clients[1:]:
        await client.close()


async def test_a_session_closed_by_the_auth_timeout_mid_authorization_is_never_registered(
    stalled_redis, make_user
):
    """The auth timeout fires while the authorization waits on a stalled Redis: the
    session is closed with 4008 (the server was too slow, not the client) and, when
    Redis answers, it is not registered: no slot, no bus channel, gauges back."""
    user = await make_user("dave", ["3002"])
    await start_hub_while_redis_is_up()
    authenticated = metrics.AUTHENTICATED._value.get()
    with override_settings(
        BROKER_WS=broker_ws_settings(REDIS_URL=stalled_redis.url, AUTH_TIMEOUT=0.3)
    ):
        (client,) = await connect(1)
        stalled_redis.stall()
        await client.send({"authorization": user.token})
        reply = await client.recv()
        assert reply["event"] == "error" and reply["data"]["code"] == "unavailable", reply
        assert await client.recv_close() == 4008
        stalled_redis.resume()
        hub = await get_hub()
        async with asyncio.timeout(TIMEOUT):
            while hub.sessions_of("3002") or any(
                s.login == "3002" for s in hub.logins.states.values()
            ):
                await asyncio.sleep(0.01)
    assert metrics.AUTHENTICATED._value.get() == authenticated
    assert not hub.users.get(str(user.user_id))


@pytest.mark.usefixtures("backend")
async def test_the_per_login_session_limit_holds_under_concurrent_authorizations(make_user):
    """30 sessions of a login new to the process authorize at once with a limit of 5:
    exactly 5 are authorized, the other 25 get too_many_sessions and 4007."""
    user = await make_user("erin", ["3003"])
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SESSIONS_PER_LOGIN=5)):
        clients = await connect(30)
        await asyncio.gather(*(c.send({"authorization": user.token}) for c in clients))
        replies = await asyncio.gather(*(client.recv() for client in clients))
        events = [r["event"] if r["event"] == "authorized" else r["data"]["code"] for r in replies]
        assert events.count("authorized") == 5, events
        assert events.count("too_many_sessions") == 25, events
        refused = [c for c, r in zip(clients, replies, strict=True) if r["event"] == "error"]
        codes = await asyncio.gather(*(client.recv_close() for client in refused))
        assert set(codes) == {4007}
        hub = await get_hub()
        assert hub.sessions_of("3003") == 5
        # A slot given back is taken again.
        accepted = [c for c, r in zip(clients, replies, strict=True) if r["event"] != "error"]
        await accepted[0].close()
        (late,) = await connect(1)
        await late.authorize(user.token)
        assert hub.sessions_of("3003") == 5
        for client in [*accepted[1:], late]:
            await client.close()


async def test_new_logins_authorize_in_parallel_while_redis_stalls(stalled_redis, make_user):
    """With Redis stalled, ten sessions of ten logins new to the process authorize
    within a few seconds in all: no lock is held across the subscription round trip
    (each waits at most about the confirmation timeout, all at once)."""
    users = [await make_user(f"user{i}", [f"40{i:02d}"]) for i in range(10)]
    await start_hub_while_redis_is_up()
    clients = await connect(10)
    stalled_redis.stall()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for client, user in zip(clients, users, strict=True):
        await client.send({"authorization": user.token})
    replies = await asyncio.gather(*(client.recv(timeout=8.0) for client in clients))
    elapsed = loop.time() - started
    stalled_redis.resume()
    assert [r["event"] for r in replies] == ["authorized"] * 10, replies
    assert elapsed < 4.0, f"ten new logins took {elapsed:.1f} s with Redis stalled"
    for client in clients:
        await client.close()


def test_a_batch_of_tokens_reads_its_users_in_one_query_and_keeps_simplejwts_checks():
    """Five tokens of five users, one of them inactive and one deleted: one query for
    the users (it was one per token), and each token still gets simplejwt's verdict."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from broker_ws.auth.tokens import AuthenticationError, _load_identities, validate_access_token
    from tests.conftest import _create_user

    made = [_create_user(f"batch{n}", [f"90{n}"], active=(n != 3)) for n in range(5)]
    get_user_model().objects.filter(pk=made[4].user_id).delete()
    tokens = [validate_access_token(user.token) for user in made]
    with CaptureQueriesContext(connection) as queries:
        results = _load_identities(tokens)
    user_queries = [q for q in queries.captured_queries if '"auth_user"' in q["sql"]]
    assert len(user_queries) == 1, user_queries
    assert [getattr(r, "username", None) for r in results[:3]] == ["batch0", "batch1", "batch2"]
    assert isinstance(results[3], AuthenticationError) and "inactive" in str(results[3]).lower()
    assert isinstance(results[4], AuthenticationError) and "not found" in str(results[4]).lower()


async def test_a_second_subscriber_during_the_first_ones_snapshot_read_gets_the_snapshot(
    stalled_redis, make_user
):
    """The first subscription of a symbol in the process subscribes its channel and
    reads its last quote; a second session subscribing to it meanwhile waits for that
    read and gets the same last quote, instead of being registered with none."""
    import broker_ws
    from broker_ws.wire.channel_names import quote_channel

    user = await make_user("gina", ["3005"])
    await start_hub_while_redis_is_up()
    await broker_ws.apublish_quote("XAU/USD", 2000.5, 2001.0, ts=1_700_000_000_000)
    first, second = await connect(2)
    for client in (first, second):
        await client.authorize(user.token)
    hub = await get_hub()
    channel = quote_channel("XAU/USD")

    stalled_redis.stall()
    await first.send({"event": "subscribe", "data": ["XAU/USD"]})
    async with asyncio.timeout(TIMEOUT):
        while hub.quotes.waiters.get(channel) != 1:
            await asyncio.sleep(0.005)
    await second.send({"event": "subscribe", "data": ["XAU/USD"]})
    async with asyncio.timeout(TIMEOUT):
        while hub.quotes.waiters.get(channel) != 2:
            await asyncio.sleep(0.005)
    stalled_redis.resume()

    for client in (first, second):
        assert (await client.recv())["event"] == "subscribed"
        assert await client.recv() == ["t", "XAU/USD", 2000.5, 2001.0, 1_700_000_000_000]
        await client.close()
