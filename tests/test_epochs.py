"""Epochs: seqs of a login are compared only within one numbering of it.

The database-restore case: a client saw seqs up to N; the database is restored
to a backup taken at seq M < N and the backend writes new frames M+1..N. The
client's ``resume`` of N looks up to date, yet every frame after M is one it
never saw. After the restore the operator runs ``manage.py ws_new_epoch``
(docs/deployment.md), and a client resuming with its old epoch gets
``resync``.
"""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command

from broker_ws.models import AccountEvent, LoginSequence
from broker_ws.publish.api import push
from tests.test_accounts import save_balance

pytestmark = pytest.mark.django_db(transaction=True)


async def authorized(client_factory: Any, token: str, **kwargs: Any) -> tuple[Any, Any]:
    client = await client_factory()
    data = await client.authorize(token, **kwargs)
    return client, data


@database_sync_to_async
def backup(login: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The login's numbering and history as a backup holds them."""
    return (
        list(LoginSequence.objects.filter(login=login).values()),
        list(AccountEvent.objects.filter(login=login).values()),
    )


@database_sync_to_async
def restore(login: str, saved: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    """Put the login's rows back as the backup had them (as a restore does)."""
    sequences, events = saved
    LoginSequence.objects.filter(login=login).delete()
    AccountEvent.objects.filter(login=login).delete()
    LoginSequence.objects.bulk_create(LoginSequence(**row) for row in sequences)
    AccountEvent.objects.bulk_create(AccountEvent(**row) for row in events)


@database_sync_to_async
def write_frames(login: str, *texts: str) -> None:
    for text in texts:
        push(login, "o", [text])


async def test_authorized_names_each_logins_epoch_and_the_protocol(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """``epoch`` per login is the numbering's (empty before the first frame);
    ``protocol`` is 1.1."""
    alice = await make_user("alice", ["1001", "1002"])
    await save_balance("1001", "10")
    await database_sync_to_async(LoginSequence.objects.filter(login="1002").delete)()
    _, data = await authorized(client_factory, alice.token)
    row = await database_sync_to_async(LoginSequence.objects.get)(login="1001")
    assert data["epoch"] == {"1001": row.epoch, "1002": ""}
    assert len(row.epoch) == 16
    assert data["protocol"] == "1.1"


async def test_a_restored_database_makes_old_epochs_resync(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Restore to seq M, new frames up to N, ws_new_epoch: resuming N with the old
    epoch is a resync, not "nothing missed"; with the new epoch it is up to date."""
    alice = await make_user("alice", ["1001"])
    await write_frames("1001", "one", "two")
    saved = await backup("1001")
    client, data = await authorized(client_factory, alice.token)
    seen, old_epoch = data["seq"]["1001"], data["epoch"]["1001"]
    await write_frames("1001", "three", "four")
    assert (await client.recv())[2:] == [seen + 1, "three"]
    assert (await client.recv())[2:] == [seen + 2, "four"]
    await client.close()
    await restore("1001", saved)
    await database_sync_to_async(call_command)("ws_new_epoch", "--all", verbosity=0)
    await write_frames("1001", "THREE", "FOUR")  # the same seqs, other frames

    again, data = await authorized(
        client_factory, alice.token, resume={"1001": seen + 2}, epochs={"1001": old_epoch}
    )
    assert data["seq"]["1001"] == seen + 2
    assert data["epoch"]["1001"] not in ("", old_epoch)
    assert await again.recv() == {"event": "resync", "data": {"1001": seen + 2}}
    await again.close()

    current, data2 = await authorized(
        client_factory, alice.token, resume={"1001": seen + 2}, epochs=data["epoch"]
    )
    assert data2["epoch"] == data["epoch"]
    await current.send("ping")
    assert await current.recv_text() == "pong"  # nothing replayed, no resync


async def test_a_login_created_again_has_a_new_epoch(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """Deleting a login's numbering starts a new epoch with its next frame."""
    alice = await make_user("alice", ["1001"])
    await write_frames("1001", "one")
    client, data = await authorized(client_factory, alice.token)
    old = data["epoch"]["1001"]
    await client.close()
    await database_sync_to_async(LoginSequence.objects.filter(login="1001").delete)()
    await database_sync_to_async(AccountEvent.objects.filter(login="1001").delete)()
    await write_frames("1001", "new one")
    again, data = await authorized(
        client_factory, alice.token, resume={"1001": 1}, epochs={"1001": old}
    )
    assert data["epoch"]["1001"] != old
    assert await again.recv() == {"event": "resync", "data": {"1001": 1}}


async def test_a_matching_or_empty_epoch_resumes_by_seq(
    backend: str, make_user: Any, client_factory: Any
) -> None:
    """The current epoch, an empty one (the login had no frame when the client
    authorized) or none at all (a v1.0 client) replay by seq as before."""
    alice = await make_user("alice", ["1001"])
    await write_frames("1001", "one")
    _, data = await authorized(client_factory, alice.token)
    seen, epoch = data["seq"]["1001"], data["epoch"]["1001"]
    await write_frames("1001", "two")
    for epochs in ({"1001": epoch}, {"1001": ""}, None):
        client, _ = await authorized(
            client_factory, alice.token, resume={"1001": seen}, epochs=epochs
        )
        assert (await client.recv())[2:] == [seen + 1, "two"]
        await client.close()


@pytest.mark.parametrize("epochs", [["x"], {"1001": 7}, {"1001": "x" * 65}, "abc"])
async def test_malformed_epochs_are_a_bad_message(
    make_user: Any, client_factory: Any, epochs: Any
) -> None:
    alice = await make_user("alice", ["1001"])
    client = await client_factory()
    await client.send({"authorization": alice.token, "resume": {"1001": 1}, "epochs": epochs})
    reply = await client.recv()
    assert reply["event"] == "error" and reply["data"]["code"] == "bad_message", reply


def test_ws_new_epoch_needs_logins_or_all() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("ws_new_epoch")


@pytest.mark.django_db
def test_ws_new_epoch_renews_only_the_named_logins() -> None:
    LoginSequence.objects.bulk_create(
        [LoginSequence(login="a", seq=3, epoch="e1"), LoginSequence(login="b", seq=4, epoch="e2")]
    )
    call_command("ws_new_epoch", "a", verbosity=0)
    rows = dict(LoginSequence.objects.values_list("login", "epoch"))
    assert rows["a"] not in ("e1", "") and rows["b"] == "e2"
    assert dict(LoginSequence.objects.values_list("login", "seq")) == {"a": 3, "b": 4}
