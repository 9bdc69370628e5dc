"""The admin: broker_ws's read-only pages, the presence page, and the operator actions
on the demo's user and account admins."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client as HttpClient
from django.test import override_settings

from broker_ws.admin_actions import CONFIRM
from broker_ws.models import AccountEvent, Broadcast, LoginSequence, Revocation
from broker_ws.publish.api import notify
from broker_ws.publish.revocation import revoke_user
from tests.conftest import broker_ws_settings
from tests.test_presence import wait_for_presence

pytestmark = pytest.mark.django_db(transaction=True)


def operator() -> HttpClient:
    """An HTTP client logged in as a staff superuser."""
    get_user_model().objects.create_superuser("root", password="pw")
    client = HttpClient()
    client.login(username="root", password="pw")
    return client


def test_admin_broker_ws_tables_are_listed_but_never_added_changed_or_deleted() -> None:
    """Outbox, revocations, broadcasts and login sequences: list and detail pages 200,
    add, change and delete refused, even for a superuser."""
    client = operator()
    notify("hello", login="1001")
    notify("everyone")
    revoke_user(get_user_model().objects.get(username="root"))
    for model in (AccountEvent, Revocation, Broadcast, LoginSequence):
        base = f"/admin/broker_ws/{model._meta.model_name}/"
        pk = model.objects.get().pk
        assert client.get(base).status_code == 200, base
        assert client.get(f"{base}add/").status_code == 403, base
        detail = client.get(f"{base}{pk}/change/")
        assert detail.status_code == 200 and b'name="_save"' not in detail.content, base
        assert client.post(f"{base}{pk}/change/", {}).status_code == 403, base
        assert client.post(f"{base}{pk}/delete/", {"post": "yes"}).status_code == 403, base
        assert model.objects.filter(pk=pk).exists()


def test_admin_account_event_list_searches_by_login() -> None:
    """The outbox list finds a login's frames, and the frame text is shown."""
    client = operator()
    notify("for 1001", login="1001")
    notify("for 2001", login="2001")
    page = client.get("/admin/broker_ws/accountevent/", {"q": "1001"}).content
    assert b"for 1001" in page and b"for 2001" not in page


async def test_admin_presence_page_lists_logins_with_sessions(
    make_user: Any, client_factory: Any
) -> None:
    """The presence page, linked from the app index, lists each login's sessions."""
    alice = await make_user("alice", ["1001"])
    client = await client_factory()
    await client.authorize(alice.token)
    await wait_for_presence({"1001": 1})

    @database_sync_to_async
    def pages() -> tuple[bytes, bytes]:
        http = operator()
        return http.get("/admin/broker_ws/").content, http.get(
            "/admin/broker_ws/loginsequence/presence/"
        ).content

    index, page = await pages()
    assert b"/admin/broker_ws/loginsequence/presence/" in index
    assert b"<tr><td>1001</td><td>1</td></tr>" in page
    assert b"1 login with 1 session on 1 server process " in b" ".join(page.split())


def test_admin_presence_page_says_so_when_redis_cannot_be_read() -> None:
    """With Redis unreachable the presence page still answers, with the reason."""
    client = operator()
    down = broker_ws_settings(REDIS_URL="redis://127.0.0.1:1/0", KEY_PREFIX="down")
    with override_settings(BROKER_WS=down):
        response = client.get("/admin/broker_ws/loginsequence/presence/")
    assert response.status_code == 200 and b"Presence is unavailable" in response.content


async def test_revoke_action_of_the_user_admin_closes_the_users_sessions_with_4004(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """The action on the user admin closes the selected user's live session with 4004."""
    alice = await make_user("alice", ["1001"])
    client = await client_factory()
    await client.authorize(alice.token)

    @database_sync_to_async
    def revoke() -> Any:
        return operator().post(
            "/admin/auth/user/",
            {"action": "revoke_stream_access", "_selected_action": [alice.user_id]},
            follow=True,
        )

    response = await revoke()
    assert b"Stream access revoked for 1 user" in response.content
    reply = await client.recv()
    assert reply["event"] == "error" and reply["data"]["code"] == "revoked"
    assert await client.recv_close() == 4004


async def test_notification_action_asks_for_the_text_then_sends_it_to_the_users_logins(
    make_user: Any, client_factory: Any
) -> None:
    """The user admin's action shows a form with the user's logins, then sends an ``n``
    frame to each of them."""
    alice = await make_user("alice", ["1001", "1002"])
    client = await client_factory()
    await client.authorize(alice.token)
    selected = {"action": "send_notification", "_selected_action": [alice.user_id]}

    @database_sync_to_async
    def send() -> tuple[Any, Any]:
        http = operator()
        form = http.post("/admin/auth/user/", selected)
        sent = http.post(
            "/admin/auth/user/",
            {**selected, CONFIRM: "yes", "text": "Margin call", "level": "warning"},
        )
        return form, sent

    form, sent = await send()
    assert form.status_code == 200 and b"To 2 logins: 1001, 1002" in form.content
    assert sent.status_code == 302
    frames = [await client.recv(), await client.recv()]
    assert sorted(f[1] for f in frames) == ["1001", "1002"]
    assert all(f[0] == "n" and f[3:5] == ["warning", "Margin call"] for f in frames)


async def test_notification_action_of_the_account_admin_sends_to_that_login_only(
    make_user: Any, client_factory: Any
) -> None:
    """On the account admin, the row's own login gets the notification."""
    from project.broker.models import Account

    alice = await make_user("alice", ["1001", "1002"])
    client = await client_factory()
    await client.authorize(alice.token)

    @database_sync_to_async
    def send() -> Any:
        account = Account.objects.get(login="1002")
        return operator().post(
            "/admin/broker/account/",
            {
                "action": "send_notification",
                "_selected_action": [account.pk],
                CONFIRM: "yes",
                "text": "hi",
                "level": "info",
            },
        )

    assert (await send()).status_code == 302
    frame = await client.recv()
    assert frame[:2] == ["n", "1002"] and frame[3:5] == ["info", "hi"]


def test_notification_action_form_is_shown_again_when_the_text_is_missing() -> None:
    """A form without text sends nothing and asks again."""
    client = operator()
    root = get_user_model().objects.get(username="root")
    response = client.post(
        "/admin/auth/user/",
        {"action": "send_notification", "_selected_action": [root.pk], CONFIRM: "yes"},
    )
    assert response.status_code == 200 and b"This field is required" in response.content
    assert not AccountEvent.objects.exists()
