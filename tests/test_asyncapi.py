"""``manage.py ws_asyncapi``: the stream's AsyncAPI 3 document.

* The demo's document is committed at docs/asyncapi.json and must be what the
  command writes for the demo's settings (regenerate it with
  ``DJANGO_SETTINGS_MODULE=project.settings .venv/bin/python manage.py ws_asyncapi
  --output docs/asyncapi.json``).
* It is a valid AsyncAPI 3.0.0 document: checked against the official JSON schema,
  vendored from npm's ``@asyncapi/specs`` (tests/schemas/README.md), offline.
* One real frame of every kind a real demo server sends (daphne, PostgreSQL and
  Redis, a websockets client) matches its message's payload schema, and only it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.servers import ROOT, Deployment, deployment, obtain_token

DOCUMENT = ROOT / "docs" / "asyncapi.json"
SCHEMA = ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json"
TIMEOUT = 15.0
#: The document's own URI inside the validation registry.
BASE = "urn:broker-ws:asyncapi"


def demo_env() -> dict[str, str]:
    """The environment scripts/demo.sh runs the demo with: its settings, untuned."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "BROKER_WS_JSON", "DJANGO_SETTINGS_MODULE")
    }
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    return env


def ws_asyncapi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "ws_asyncapi", *args],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def load_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return document


# --- the committed document -------------------------------------------------------------


def test_committed_document_is_up_to_date() -> None:
    """docs/asyncapi.json is exactly what the command writes for the demo's settings."""
    done = ws_asyncapi()
    assert done.returncode == 0, done.stderr
    assert done.stdout == DOCUMENT.read_text(encoding="utf-8"), (
        "docs/asyncapi.json is out of date: run DJANGO_SETTINGS_MODULE=project.settings "
        ".venv/bin/python manage.py ws_asyncapi --output docs/asyncapi.json"
    )
    check = ws_asyncapi("--check", str(DOCUMENT))
    assert check.returncode == 0, check.stderr


def test_check_fails_with_a_clear_message_and_output_writes_the_same_text(
    tmp_path: Path,
) -> None:
    written = tmp_path / "asyncapi.json"
    done = ws_asyncapi("--output", str(written))
    assert done.returncode == 0, done.stderr
    assert written.read_text(encoding="utf-8") == DOCUMENT.read_text(encoding="utf-8")

    stale = tmp_path / "stale.json"
    stale.write_text(DOCUMENT.read_text(encoding="utf-8").replace('"1.1"', '"0.9"', 1))
    check = ws_asyncapi("--check", str(stale))
    assert check.returncode == 1
    assert f"{stale} is out of date" in check.stderr
    assert "ws_asyncapi --output" in check.stderr

    missing = ws_asyncapi("--check", str(tmp_path / "none.json"))
    assert missing.returncode == 1
    assert "cannot read it" in missing.stderr


def test_document_is_valid_asyncapi_3() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    document = load_document()
    errors = sorted(
        Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path)
    )
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)
    # The AsyncAPI schema does not look where a $ref points: every one must resolve.
    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} points nowhere"
            node = node[part]
    # Every payload schema is a valid draft 7 schema.
    for message in document["components"]["messages"].values():
        Draft7Validator.check_schema(message["payload"])


def test_document_lists_the_contract() -> None:
    """What the issue asks of the document, read from the code that defines it."""
    from broker_ws.wire.protocol import CloseCode, ErrorCode

    document = load_document()
    schemas = document["components"]["schemas"]
    assert schemas["ErrorCode"]["enum"] == sorted(code.value for code in ErrorCode)
    close_codes = document["channels"]["stream"]["x-close-codes"]
    assert [row["code"] for row in close_codes] == sorted(int(code) for code in CloseCode)
    for code in CloseCode:
        assert f"| {int(code)} | `{code.name}` |" in document["info"]["description"]
    messages = document["components"]["messages"]
    for name in ("frame_a", "frame_b", "frame_o", "state_e", "command_place_order"):
        assert name in messages
    balance = messages["frame_b"]["payload"]["items"]
    assert [item.get("title") for item in balance[3:]] == [
        "currency",
        "balance",
        "equity",
        "margin",
        "free_margin",
        "updated_at",
    ]
    assert document["channels"]["stream"]["address"] == "/"


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# --- real frames against their schemas -----------------------------------------------------


def server_messages(document: dict[str, Any]) -> list[str]:
    """The names of every message the server sends (stream and replies)."""
    names: set[str] = set()
    for operation in document["operations"].values():
        refs = operation["messages"] if operation["action"] == "send" else []
        refs = refs + operation.get("reply", {}).get("messages", [])
        names.update(ref["$ref"].rsplit("/", 1)[1] for ref in refs)
    return sorted(names)


def validator(document: dict[str, Any], name: str) -> Draft7Validator:
    """A validator of message ``name``'s payload, its $refs resolved in the document."""
    registry: Registry[Any] = Registry().with_resource(
        BASE, Resource.from_contents(document, default_specification=DRAFT7)
    )
    return Draft7Validator(
        {"$ref": f"{BASE}#/components/messages/{name}/payload"}, registry=registry
    )


def kind_of(frame: Any, document: dict[str, Any]) -> str:
    """The message a received frame is meant to be, from its marker or event."""
    if frame == "pong":
        return "pong"
    if isinstance(frame, list):
        marker = frame[0]
        names = {"t": "quote", "s": "status", "h": "heartbeat", "n": "notification"}
        if marker in names:
            return names[marker]
        messages = document["components"]["messages"]
        return "frame_" + marker if "frame_" + marker in messages else "state_" + marker
    event = frame["event"]
    if event == "error":
        codes = document["components"]["schemas"]["ErrorCode"]["enum"]
        return "error" if frame["data"]["code"] in codes else "command_error"
    if f"reply_{event}" in document["components"]["messages"]:
        return f"reply_{event}"
    return str(event)


def _features() -> dict[str, str]:
    """Kinds whose feature this tree may not have yet: the reason each would be missing."""
    import broker_ws
    from broker_ws.conf import DEFAULTS

    missing = {}
    if not hasattr(broker_ws, "publish_status"):
        missing["status"] = "broker_ws.publish_status is not implemented yet"
    if not hasattr(broker_ws, "publish_state"):
        missing["state_e"] = "broker_ws.publish_state is not implemented yet"
    if "HEARTBEAT_INTERVAL" not in DEFAULTS:
        missing["heartbeat"] = "HEARTBEAT_INTERVAL is not implemented yet"
    return missing


SHELL = """
import broker_ws
from decimal import Decimal
from django.db import transaction
from project.broker.models import Account, Balance, PriceAlert
broker_ws.publish_quote("EUR/USD", 1.1, 1.2)
if hasattr(broker_ws, "publish_status"):
    broker_ws.publish_status("EUR/USD", "halted")
if hasattr(broker_ws, "publish_state"):
    broker_ws.publish_state("1001", "e", [10250.5, 120, 10130.5, 8541.67, -12.25])
broker_ws.notify("margin call", level="warning", login="1001")
broker_ws.notify("maintenance at 22:00")
with transaction.atomic():
    balance = Balance.objects.select_for_update().get(account__login="1001")
    balance.balance = Decimal("12345.67")
    balance.save()
PriceAlert.objects.create(
    account=Account.objects.get(login="1001"), symbol="EUR/USD", condition="above",
    price=Decimal("9.5"),
)
"""


async def _collect(demo: Deployment, document: dict[str, Any]) -> dict[str, list[Any]]:
    """Drive a real server through every kind of frame it sends; return them by kind."""
    missing = _features()
    host = demo.start_server("--no-feed")
    token = obtain_token(host, "alice", "alice-demo-pass")["access"]
    seen: dict[str, list[Any]] = {}
    async with websockets.connect(f"ws://{host}/") as ws:
        await _drive(demo, document, ws, token, seen, missing)
    return seen


async def _drive(
    demo: Deployment,
    document: dict[str, Any],
    ws: Any,
    token: str,
    seen: dict[str, list[Any]],
    missing: dict[str, str],
) -> None:
    async def until(*kinds: str) -> None:
        """Read frames (keeping every one) until each of ``kinds`` was seen."""
        async with asyncio.timeout(TIMEOUT):
            while not all(kind in seen for kind in kinds):
                raw = await ws.recv()
                assert isinstance(raw, str)
                frame = json.loads(raw) if raw[:1] in "[{" else raw
                seen.setdefault(kind_of(frame, document), []).append(frame)

    await ws.send("ping")
    await until("pong")
    await ws.send("{bad")
    await ws.send(json.dumps({"event": "subscribe", "data": ["EUR/USD"]}))
    await until("error")
    # A seq of another epoch: the numbering this client saw is not the server's.
    await ws.send(
        json.dumps({"authorization": token, "resume": {"1001": 1}, "epochs": {"1001": "x"}})
    )
    await until("authorized", "resync")
    await ws.send(json.dumps({"event": "subscribe", "data": ["EUR/USD", ""]}))
    await until("subscribed")
    order = {"login": "1001", "symbol": "EUR/USD", "side": "buy", "volume": 0.5, "price": 1.1}
    await ws.send(json.dumps({"event": "place_order", "id": "c-1", "data": order}))
    await until("reply_place_order", "frame_o")
    ticket = seen["reply_place_order"][0]["data"]["ticket"]
    for request_id, close in ((2, {"ticket": ticket}), (3, {"ticket": -1})):
        data = {"login": "1001", "price": 1.2, **close}
        await ws.send(json.dumps({"event": "close_trade", "id": request_id, "data": data}))
    await ws.send(json.dumps({"event": "hello", "id": 4}))
    await until("reply_close_trade", "command_error")
    await asyncio.to_thread(demo.shell, SHELL)
    wanted = ["quote", "notification", "frame_b", "frame_a", "status", "state_e"]
    await until(*(kind for kind in wanted if kind not in missing))
    await ws.send(json.dumps({"event": "unsubscribe", "data": ["EUR/USD"]}))
    await until("unsubscribed")
    if "heartbeat" not in missing:
        await until("heartbeat")  # HEARTBEAT_INTERVAL is 1 s in this deployment
    proc = demo.servers[0]
    proc.terminate()  # SIGTERM: the drain's notice, then 4009
    with pytest.raises(websockets.ConnectionClosed):
        await until("reconnect", "never sent")
    assert ws.close_code == 4009
    _, err = await asyncio.to_thread(proc.communicate, timeout=TIMEOUT)
    demo.servers.clear()
    assert "Traceback" not in err.decode(errors="replace")


@pytest.fixture(scope="module")
def real_frames(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Every frame a real demo server (PostgreSQL and Redis) sent in one session, by kind."""
    document = load_document()
    with deployment("redis", tmp_path_factory.mktemp("asyncapi")) as demo:
        demo.env["BROKER_WS_JSON"] = json.dumps({"HEARTBEAT_INTERVAL": 1, "DRAIN_WINDOW": 1})
        return asyncio.run(_collect(demo, document))


@pytest.mark.parametrize("name", server_messages(load_document()))
def test_a_real_frame_matches_its_message_schema(
    name: str, real_frames: dict[str, list[Any]]
) -> None:
    """Each kind of server message was sent by the server, and each frame of it is valid
    against its payload schema and against no other server message's (AsyncAPI: one
    message, and only one, per frame)."""
    document = load_document()
    frames = real_frames.get(name)
    missing = _features()
    if not frames and name in missing:
        pytest.skip(missing[name])
    assert frames, f"the server sent no {name!r} frame; seen: {sorted(real_frames)}"
    others = [other for other in server_messages(document) if other != name]
    for frame in frames:
        errors = list(validator(document, name).iter_errors(frame))
        assert not errors, (frame, [e.message for e in errors])
        also = [other for other in others if validator(document, other).is_valid(frame)]
        assert not also, f"{frame} also matches {also}"


# --- the document follows the deployment's settings ------------------------------------------


def test_malformed_frames_are_refused() -> None:
    """The payload schemas are exact: a frame of the wrong shape does not pass."""
    document = load_document()
    bad = {
        "quote": ["t", "EUR/USD", "1.1", 1.2, 1796420052000],
        "frame_b": ["b", "1001", 3, "USD", 10.5, 10.5, 0, 10.5],  # a field short
        "frame_o": ["o", "1001", 3, 7, "EUR/USD", "hold", 1, 1, None, 0, "open", 1],
        "heartbeat": ["h", 1796420052000, {"1001": -1}],
        "notification": ["n", "1001", None, "info", "text", 1796420052000],
        "authorized": {
            "event": "authorized",
            "data": {"user": "alice", "logins": ["1001"], "expires": 1, "seq": {"1001": 0}},
        },
        "error": {"event": "error", "data": {"code": "no_such_code", "message": "?"}},
        "state_e": ["e", "1001", 4, 1, 2, 3, 4, 5],  # state frames carry no seq
    }
    for name, frame in bad.items():
        assert not validator(document, name).is_valid(frame), name


def test_document_of_other_settings(settings: Any) -> None:
    """Two models on one marker, a row of several logins, callables and relations as
    fields, a fixed symbol list, no commands and no state markers."""
    import broker_ws
    from broker_ws.publish.bindings import unbind
    from broker_ws.wire import asyncapi
    from tests.exchange.models import Deal

    settings.BROKER_WS = {
        **settings.BROKER_WS,
        "SYMBOLS": ["US 500", "EUR/USD"],
        "COMMANDS": {},
        "STATE_MARKERS": {},
        "INSTRUMENT_STATUSES": ["auction"],
    }
    broker_ws.bind(
        Deal,
        marker="b",
        login=["buyer.login", "seller.login"],
        fields=["symbol", "price", "buyer", "seller_id", "buyer.currency", "status", str],
    )
    try:
        document = asyncapi.document()
    finally:
        unbind(Deal)
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert not list(Draft7Validator(schema).iter_errors(document))
    assert asyncapi.dumps(document) == asyncapi.dumps(json.loads(asyncapi.dumps(document)))
    messages = document["components"]["messages"]
    assert "frame_b" not in messages
    assert {"frame_b_broker_Balance", "frame_b_exchange_Deal"} <= set(messages)
    assert not [name for name in messages if name.startswith("state_")]
    assert "command_place_order" not in messages  # COMMANDS is empty
    schemas = document["components"]["schemas"]
    assert schemas["Symbol"]["enum"] == ["EUR/USD", "US 500"]
    assert "auction" in schemas["InstrumentStatus"]["enum"]
    items = messages["frame_b_exchange_Deal"]["payload"]["items"]
    assert [item.get("type") for item in items[3:]] == [
        "string",  # symbol
        "number",  # price: a decimal
        "integer",  # buyer: the account's primary key
        "integer",  # seller_id
        "string",  # buyer.currency, through the relation
        "string",  # status
        None,  # a callable: any JSON
    ]
    status = Deal._meta.get_field("status")
    status.null, status.choices = True, [("open", "Open"), ("done", "Done")]
    try:
        nullable = asyncapi._field_schema(Deal, "status")
    finally:
        status.null, status.choices = False, None
    assert nullable == {
        "title": "status",
        "type": ["string", "null"],
        "enum": ["open", "done", None],
    }
    deal = ["b", "1002", 9, "EUR/USD", 1.085, 4, 5, "USD", "open", "anything"]
    assert validator(document, "frame_b_exchange_Deal").is_valid(deal)
    assert not validator(document, "frame_b_broker_Balance").is_valid(deal)
