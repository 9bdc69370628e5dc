"""Shared fixtures: users with tokens, a protocol client, and the backends.

``backend`` runs a test once with the in-process backend and once with the
real Redis on this machine (``REDIS_URL``, default redis://127.0.0.1:6379/0),
under a key prefix of its own that is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import override_settings

from broker_ws.session.hub import close_hubs
from broker_ws.testing import StreamClient

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = 5.0


def broker_ws_settings(**overrides: Any) -> dict[str, Any]:
    """The test BROKER_WS dict with ``overrides`` applied."""
    return {**settings.BROKER_WS, **overrides}


def redis_settings(prefix: str | None = None, **overrides: Any) -> dict[str, Any]:
    """BROKER_WS for the real Redis under a fresh key prefix."""
    prefix = prefix or f"t{uuid.uuid4().hex[:12]}"
    return broker_ws_settings(REDIS_URL=REDIS_URL, KEY_PREFIX=prefix, **overrides)


def delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test against the in-process backend and against real Redis."""
    if request.param == "memory":
        with override_settings(BROKER_WS=broker_ws_settings(KEY_PREFIX=f"m{uuid.uuid4().hex[:8]}")):
            yield "memory"
        return
    config = redis_settings()
    with override_settings(BROKER_WS=config):
        yield "redis"
    delete_prefix(config["KEY_PREFIX"])


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    """Every test starts with no failure scores: communicator sessions all share
    one client address, and earlier tests' bad tokens must not delay later ones."""
    import broker_ws.auth.throttle

    broker_ws.auth.throttle._throttle = None
    yield
    broker_ws.auth.throttle._throttle = None


@pytest.fixture(autouse=True)
async def _close_hubs() -> AsyncIterator[None]:
    """Close the test's hubs, and check that their outbox poll threads ended (a left
    thread would keep a database connection open past the test)."""
    yield
    await close_hubs()
    async with asyncio.timeout(TIMEOUT):
        while any(t.name == "broker_ws-outbox" for t in threading.enumerate()):
            await asyncio.sleep(0.01)


@dataclass
class DemoUser:
    username: str
    user_id: int
    logins: list[str]
    token: str
    refresh: str


def _create_user(username: str, logins: list[str], active: bool = True) -> DemoUser:
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.tokens import RefreshToken

    from project.broker.models import Account, Balance

    user = get_user_model().objects.create_user(username, password="pw", is_active=active)
    for login in logins:
        account = Account.objects.create(user=user, login=login)
        Balance.objects.create(account=account, balance=100, equity=100, free_margin=100)
    refresh = RefreshToken.for_user(user)
    return DemoUser(username, user.pk, logins, str(refresh.access_token), str(refresh))


@pytest.fixture
def make_user() -> Any:
    """``await make_user("alice", ["1001"])`` → DemoUser with a fresh access token."""

    async def make(username: str, logins: list[str], active: bool = True) -> DemoUser:
        return await database_sync_to_async(_create_user)(username, logins, active)

    return make


#: The project's tests speak protocol v1 through the public test kit.
Client = StreamClient


@pytest.fixture
async def client_factory() -> AsyncIterator[Any]:
    """``await client_factory()`` → a connected Client, disconnected at teardown."""
    clients: list[Client] = []

    async def factory(**kwargs: Any) -> Client:
        client = Client(**kwargs)
        await client.connect()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        with contextlib.suppress(Exception):  # already closed by the server
            await client.close()
