"""Revocation (4004), message rate (4006) and sessions per login (4007)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone

from broker_ws.models import Revocation
from broker_ws.publish.revocation import arevoke_user
from broker_ws.session.ratelimit import TokenBucket
from tests.conftest import broker_ws_settings

pytestmark = pytest.mark.django_db(transaction=True)


async def authorized(client_factory: Any, token: str) -> Any:
    client = await client_factory()
    await client.authorize(token)
    return client


async def test_revoke_user_closes_every_session_of_that_user_with_4004(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """revoke_user closes the user's sessions with an error and 4004; others stay."""
    alice = await make_user("alice", ["1001"])
    bob = await make_user("bob", ["2001"])
    alices = [await authorized(client_factory, alice.token) for _ in range(2)]
    bobs = await authorized(client_factory, bob.token)
    await arevoke_user(alice.user_id)
    for client in alices:
        reply = await client.recv()
        assert reply["event"] == "error" and reply["data"]["code"] == "revoked"
        assert await client.recv_close() == 4004
    await bobs.send("ping")
    assert await bobs.recv_text() == "pong"


async def test_revoked_token_is_refused_but_a_later_one_is_accepted(
    make_user: Any, client_factory: Any
) -> None:
    """Tokens issued before the revocation are refused; a fresh login works."""
    from rest_framework_simplejwt.tokens import AccessToken

    alice = await make_user("alice", ["1001"])
    await arevoke_user(alice.user_id)
    client = await client_factory()
    await client.send({"authorization": alice.token})
    reply = await client.recv()
    assert reply["data"]["code"] == "auth_failed" and "revoked" in reply["data"]["message"]
    assert await client.recv_close() == 4001

    @database_sync_to_async
    def fresh_token() -> str:
        # Let the revocation lie 5 s in the past: a token issued now is newer.
        Revocation.objects.update(revoked_at=timezone.now() - dt.timedelta(seconds=5))
        return str(AccessToken.for_user(get_user_model().objects.get(pk=alice.user_id)))

    await authorized(client_factory, await fresh_token())


async def test_deactivating_a_user_closes_its_sessions(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Saving a user with is_active=False (the admin, a shell) closes its sessions."""
    alice = await make_user("alice", ["1001"])
    client = await authorized(client_factory, alice.token)

    @database_sync_to_async
    def deactivate() -> None:
        user = get_user_model().objects.get(pk=alice.user_id)
        user.is_active = False
        user.save()

    await deactivate()
    assert await client.recv_close() == 4004


async def test_message_rate_over_the_limit_closes_with_4006(
    make_user: Any, client_factory: Any
) -> None:
    """A client flooding messages gets rate_limited and close 4006."""
    with override_settings(BROKER_WS=broker_ws_settings(MAX_MESSAGES_PER_SECOND=5)):
        client = await client_factory()
        for _ in range(11):  # a burst of 2 x 5 is allowed; the 11th is one too many
            await client.send("ping")
        replies = [await client.recv_text() for _ in range(11)]
        assert replies[:10] == ["pong"] * 10
        assert '"rate_limited"' in replies[10]
        assert await client.recv_close() == 4006


def test_token_bucket_refills_at_its_rate() -> None:
    """After a burst, one message per 1/rate seconds is allowed again."""
    now = [0.0]
    bucket = TokenBucket(5, clock=lambda: now[0])
    assert all(bucket.allow() for _ in range(10))
    assert not bucket.allow()
    now[0] += 0.2
    assert bucket.allow()
    assert not bucket.allow()


async def test_sessions_per_login_over_the_limit_are_refused_with_4007(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """One session more than MAX_SESSIONS_PER_LOGIN is refused; closing one makes room."""
    alice = await make_user("alice", ["1001"])
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SESSIONS_PER_LOGIN=2)):
        first = await authorized(client_factory, alice.token)
        await authorized(client_factory, alice.token)
        third = await client_factory()
        await third.send({"authorization": alice.token})
        reply = await third.recv()
        assert reply["data"]["code"] == "too_many_sessions"
        assert reply["data"]["logins"] == ["1001"]
        assert await third.recv_close() == 4007
        await first.close()
        fourth = await client_factory()
        await fourth.send("ping")  # the hub forgets the first session meanwhile
        assert await fourth.recv_text() == "pong"
        await fourth.authorize(alice.token)


async def test_old_revocation_does_not_close_a_session_of_a_later_token(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """A revocation heard late (a slow poll, a process that starts later) closes only
    sessions whose token was issued before it."""
    from broker_ws.backends import get_backend
    from broker_ws.publish.revocation import revocation_payload
    from broker_ws.wire import channel_names

    alice = await make_user("alice", ["1001"])
    client = await authorized(client_factory, alice.token)
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    await get_backend().apublish(
        channel_names.revocations_channel(), revocation_payload(str(alice.user_id), long_ago)
    )
    await client.send("ping")
    assert await client.recv_text() == "pong"
    await get_backend().apublish(
        channel_names.revocations_channel(), revocation_payload(str(alice.user_id), timezone.now())
    )
    assert await client.recv_close() == 4004


async def test_refresh_token_issued_before_a_revocation_is_refused(make_user: Any) -> None:
    """POST /api/token/refresh/ with a refresh token older than the revocation: 401;
    simplejwt alone would mint an access token the stream accepts."""
    from django.test import Client as HttpClient

    alice = await make_user("alice", ["1001"])
    await arevoke_user(alice.user_id)

    def refresh() -> int:
        response = HttpClient().post(
            "/api/token/refresh/", {"refresh": alice.refresh}, content_type="application/json"
        )
        return response.status_code

    assert await database_sync_to_async(refresh)() == 401


def test_a_revocation_prunes_the_users_earlier_ones() -> None:
    """Once the revoking transaction commits, the user's rows it supersedes are deleted,
    so the table keeps about one row per revoked user; tokens of every earlier
    revocation are still refused. Another user's rows are kept."""
    from broker_ws.publish.revocation import is_revoked, revoke_user

    long_ago = timezone.now() - dt.timedelta(days=30)
    Revocation.objects.create(user_id="7", revoked_at=long_ago)
    other = Revocation.objects.create(user_id="8", revoked_at=long_ago)
    for _ in range(3):
        revoke_user("7")
    newest = Revocation.objects.filter(user_id="7").order_by("id").last()
    assert newest is not None
    assert set(Revocation.objects.values_list("id", flat=True)) == {other.id, newest.id}
    assert is_revoked("7", long_ago - dt.timedelta(seconds=1))
    assert is_revoked("7", newest.revoked_at)
    assert is_revoked("8", long_ago)


def test_a_revocation_keeps_a_later_dated_row() -> None:
    """A row dated after the new revocation (clocks of two hosts apart) refuses more
    than it: it stays."""
    from broker_ws.publish.revocation import revoke_user

    skewed = Revocation.objects.create(
        user_id="7", revoked_at=timezone.now() + dt.timedelta(hours=1)
    )
    revoke_user("7")
    assert Revocation.objects.filter(user_id="7").count() == 2
    assert Revocation.objects.filter(id=skewed.id).exists()


def test_pruning_waits_for_the_commit_of_the_revoking_transaction() -> None:
    """Inside a transaction nothing is pruned until it commits; rolled back, nothing is."""
    from django.db import transaction

    from broker_ws.publish.revocation import revoke_user

    old = Revocation.objects.create(user_id="7", revoked_at=timezone.now())
    with pytest.raises(RuntimeError), transaction.atomic():
        revoke_user("7")
        raise RuntimeError("rolled back")
    assert list(Revocation.objects.values_list("id", flat=True)) == [old.id]
    with transaction.atomic():
        revoke_user("7")
        assert Revocation.objects.filter(id=old.id).exists()
    assert not Revocation.objects.filter(id=old.id).exists()
