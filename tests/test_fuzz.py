"""Hostile input: StreamConsumer fed tens of thousands of arbitrary client messages.

Hypothesis generates the messages (arbitrary text and bytes, JSON of every
shape, protocol messages with fields of any type, huge and deeply nested
payloads), sent one at a time or pipelined; each example runs a fresh event
loop with ``asyncio.run`` and ends by closing the loop's hub, so examples
share nothing but the database users of the test. After every message (or
pipelined batch) the session must still answer ``ping`` with ``pong``; every
other reply must be a control object with a known event (never
``internal_error``) or a data array; the only close allowed is 4001 right
after a failed authorization of an unauthenticated session (a fresh session
is opened then), plus 4006 after ``rate_limited`` in the one test that keeps
the rate limit on (the others lift it: they send far faster than a client
may); and nothing may be logged at ERROR by ``broker_ws``.

Also here: a fuzzed session never receives another user's account frames, a
session's quotes follow its subscribe/unsubscribe history exactly, and the
forged-token cases that tests/test_protocol.py does not cover.

Nothing sleeps and hopes: the ping sent after each message (or a marker frame
pushed after the frames that must not arrive) proves every reply has been seen.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
import pytest
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_ws.publish.api import anotify, apublish_quote
from broker_ws.session.hub import close_hubs
from broker_ws.wire.protocol import ErrorCode
from tests.conftest import TIMEOUT, Client, DemoUser, delete_prefix, redis_settings

CONTROL_EVENTS = frozenset({"error", "authorized", "subscribed", "unsubscribed", "resync"})
# internal_error is what a bug of broker_ws looks like to a client: never acceptable here.
ERROR_CODES = frozenset(code.value for code in ErrorCode) - {ErrorCode.INTERNAL_ERROR.value}
DATA_MARKERS = frozenset({"t", "b", "o", "a", "n"})
LIMIT = 16_384  # MAX_MESSAGE_BYTES default
FUZZ: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}

# --- strategies ------------------------------------------------------------------------


def _encodable(text: str) -> bool:
    """Text a real WebSocket text frame can carry (UTF-8: no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


any_text = st.text().filter(_encodable)  # control characters included
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.sampled_from(["event", "data", "authorization", "resume"]) | any_text,
            children,
            max_size=6,
        )
    ),
    max_leaves=24,
)
symbols = (
    st.sampled_from(["EURUSD", "BTC/USD", "#AAPL", "US 500", "", "\x00", "S" * 300]) | any_text
)
huge_strings = st.integers(min_value=LIMIT - 200, max_value=4 * LIMIT).map(lambda n: "x" * n)
logins = st.sampled_from(["1001", "1002", "2001", "", "0"]) | any_text
resumes = (
    json_values
    | st.dictionaries(
        logins,
        st.integers(min_value=-3, max_value=2**64 - 1) | json_scalars,
        max_size=4,
    )
    | st.dictionaries(logins, st.integers(min_value=0, max_value=5), min_size=1, max_size=3)
)
jwt_like = st.builds(
    lambda parts: ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in parts),
    st.lists(st.binary(max_size=64), min_size=1, max_size=5),
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def deep(n: int, kind: str) -> str:
    """JSON nested ``n`` levels: open only, balanced arrays, or balanced objects."""
    if kind == "open":
        return "[" * n
    if kind == "arrays":
        return "[" * n + "]" * n
    if kind == "objects":
        return '{"a":' * n + "1" + "}" * n
    # a protocol message whose data is nested under orjson's depth limit
    return '{"event":"subscribe","data":' + "[" * n + "]" * n + "}"


nested = st.one_of(
    st.just("[" * 10_000),
    st.just("[" * 8_000 + "]" * 8_000),
    st.just('{"a":' * 2_500 + "1" + "}" * 2_500),
    st.builds(deep, st.integers(min_value=1, max_value=8_000), st.sampled_from(["open", "arrays"])),
    st.builds(deep, st.integers(min_value=1, max_value=2_600), st.just("objects")),
    st.builds(deep, st.integers(min_value=1000, max_value=1100), st.just("data")),
)
huge = st.one_of(
    st.integers(min_value=LIMIT + 1, max_value=80_000).map(
        lambda n: _dumps({"event": "subscribe", "data": ["X" * n]})
    ),
    st.integers(min_value=LIMIT // 3, max_value=LIMIT).map(lambda n: "€" * n),
    st.integers(min_value=LIMIT - 64, max_value=LIMIT + 64).map(lambda n: "y" * n),
    st.integers(min_value=1000, max_value=4000).map(
        lambda n: _dumps({"event": "subscribe", "data": [f"S{i}" for i in range(n)]})
    ),
)


@dataclass(frozen=True)
class Token:
    """Placeholder for the test user's valid access token, filled in at send time."""

    which: str = "valid"


def messages() -> st.SearchStrategy[Any]:
    """One client message: str (text frame), bytes (binary frame) or a dict to encode."""
    token_values = st.just(Token()) | any_text | huge_strings | jwt_like | json_values | st.just("")
    event_objects = st.fixed_dictionaries(
        {"event": st.sampled_from(["subscribe", "unsubscribe"]) | any_text | json_values},
        optional={"data": json_values | st.lists(symbols, max_size=8)},
    )
    auth_objects = st.fixed_dictionaries(
        {"authorization": token_values},
        optional={"resume": resumes, "event": json_values, "data": json_values},
    )
    return st.one_of(
        any_text,
        st.just("ping"),
        st.binary(max_size=256),
        json_values.map(_dumps),
        event_objects,
        auth_objects,
        st.fixed_dictionaries({"authorization": st.just(Token())}, optional={"resume": resumes}),
        nested,
        huge,
        st.sampled_from(["{", "}", "[]", "{}", "null", '"ping"', " ping", "PONG", "\ufeff{}"]),
    )


# --- the session driver ------------------------------------------------------------------


def check_reply(text: str) -> Any:
    """A reply other than pong: a known control object or a data array."""
    assert text[:1] in ("{", "["), text[:200]
    value = orjson.loads(text)
    if isinstance(value, dict):
        assert value.get("event") in CONTROL_EVENTS, text[:200]
        if value["event"] == "error":
            data = value["data"]
            assert isinstance(data, dict), text[:200]
            assert data.get("code") in ERROR_CODES, text[:200]
            assert isinstance(data.get("message"), str) and data["message"], text[:200]
    else:
        assert isinstance(value, list) and value, text[:200]
        assert value[0] in DATA_MARKERS, text[:200]
    return value


@dataclass
class Fuzzer:
    """One session at a time, replaced after an allowed 4001 close."""

    tokens: dict[str, str]
    authorize_as: str | None = None
    client: Client | None = None
    authorized: bool = False
    sent: int = 0
    reconnects: int = 0
    replies: list[Any] = field(default_factory=list)
    forbidden_login: str | None = None
    rate_limited: int = 0  # sessions closed with 4006 (only when the test allows it)
    allow_rate_limit: bool = False

    async def open(self) -> None:
        self.client = Client()
        await self.client.connect()
        self.authorized = False
        if self.authorize_as is not None:
            await self.client.authorize(self.tokens[self.authorize_as])
            self.authorized = True

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    def encode(self, message: Any) -> dict[str, Any]:
        """The ASGI receive event for ``message``."""
        if isinstance(message, bytes):
            return {"type": "websocket.receive", "bytes": message}
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        if isinstance(message.get("authorization"), Token):
            which = message["authorization"].which
            message = {**message, "authorization": self.tokens[which]}
        return {"type": "websocket.receive", "text": _dumps(message)}

    async def send(self, message: Any) -> None:
        """Send ``message`` and a ping; check everything up to the pong."""
        await self.send_batch([message])

    async def send_batch(self, batch: list[Any]) -> None:
        """Send every message of ``batch`` without waiting, then a ping; check every
        reply up to the last pong (or up to an allowed close, then reconnect)."""
        assert self.client is not None
        events = [self.encode(message) for message in batch]
        for event in events:
            await self.client.ws.send_input(event)
        await self.client.ws.send_input({"type": "websocket.receive", "text": "ping"})
        self.sent += len(events)
        pongs = 1 + sum(1 for event in events if event.get("text") == "ping")
        last: Any = None
        while pongs:
            output = await self.client.ws.receive_output(TIMEOUT)
            if output["type"] == "websocket.close":
                await self._closed(output, last, batch)
                return
            assert output["type"] == "websocket.send", output
            text = output.get("text")
            assert text is not None, f"binary frame sent by the server: {output!r}"
            if text == "pong":
                pongs -= 1
                continue
            last = check_reply(text)
            self.replies.append(last)
            if isinstance(last, list) and self.forbidden_login is not None:
                assert last[1] != self.forbidden_login, f"frame of another user's login: {text}"
            if isinstance(last, dict) and last["event"] == "authorized":
                self.authorized = True

    async def _closed(self, output: dict[str, Any], last: Any, batch: list[Any]) -> None:
        """Only a failed authorization of an unauthenticated session may close it (4001),
        and a flood over MAX_MESSAGES_PER_SECOND (4006) where the test allows it; each
        right after its error reply. A fresh session replaces it."""
        code = output.get("code")
        assert isinstance(last, dict) and last["event"] == "error", (code, last, f"{batch!r:.500}")
        if code == 4006 and self.allow_rate_limit:
            assert last["data"]["code"] == "rate_limited", last
            self.rate_limited += 1
        else:
            assert code == 4001, f"closed with {code} after {batch!r:.500}"
            assert not self.authorized, f"authorized session closed with 4001: {batch!r:.500}"
            assert last["data"]["code"] == "auth_failed", last
            self.reconnects += 1
        await self.close()
        await self.open()


def limits(**overrides: Any) -> override_settings:
    """BROKER_WS as currently set (the backend fixture's, if any), with ``overrides``.

    The fuzz refuses thousands of tokens from one address in one test: the
    failed-authorization delay (tests/test_throttle.py) is off here.
    """
    # Every fuzz case comes from one address: no failed-authorization delay here.
    base = {**django_settings.BROKER_WS, "AUTH_FAILURE_MAX_DELAY": 0}
    return override_settings(BROKER_WS={**base, **overrides})


#: The fuzz sends far faster than a client may: lift the rate limit, except where tested.
UNLIMITED = {"MAX_MESSAGES_PER_SECOND": 1_000_000}


def chunks(batch: list[Any], size: int) -> list[list[Any]]:
    """``batch`` cut in pipelined runs of ``size`` messages."""
    return [batch[i : i + size] for i in range(0, len(batch), size)]


PIPELINE = st.sampled_from([1, 1, 1, 3, 10, 50])
RACE = "test_resubscribe_while_a_release_waits_for_the_hub_lock"


def pipeline_for(backend: str) -> st.SearchStrategy[int]:
    """How many messages to send before reading the replies (pipelined runs once
    tripped a race in the hub on Redis: ``test_resubscribe_while_a_release_waits...``)."""
    return PIPELINE


def broker_ws_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}\n{r.exc_text or ''}"
        for r in caplog.records
        if r.name.startswith("broker_ws") and r.levelno >= logging.ERROR
    ]


def _create_refresh(user_id: int) -> str:
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.tokens import RefreshToken

    return str(RefreshToken.for_user(get_user_model().objects.get(pk=user_id)))


# --- one unauthenticated-then-whatever session ---------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_arbitrary_messages_never_break_a_session(make_user: Any, caplog: Any) -> None:
    """Thousands of hostile messages, starting unauthenticated: every one is answered
    with known replies and the session still answers ping; nothing closes it but
    4001 after a failed authorization; nothing logs an error."""
    caplog.set_level(logging.INFO, logger="broker_ws")
    alice: DemoUser = asyncio.run(make_user("alice", ["1001", "1002"]))

    async def history() -> None:
        for i in range(3):  # frames for resume to replay
            await anotify(f"past {i}", login="1001")

    asyncio.run(history())
    stats = {"sent": 0, "reconnects": 0, "authorized": 0}

    @settings(max_examples=500, **FUZZ)
    @given(st.lists(messages(), min_size=10, max_size=40), PIPELINE)
    def run(batch: list[Any], pipeline: int) -> None:
        fuzzer = Fuzzer({"valid": alice.token})

        async def body() -> None:
            try:
                await fuzzer.open()
                for part in chunks(batch, pipeline):
                    await fuzzer.send_batch(part)
                await fuzzer.close()
            finally:
                await close_hubs()

        caplog.clear()
        asyncio.run(body())
        assert not broker_ws_errors(caplog), broker_ws_errors(caplog)
        stats["sent"] += fuzzer.sent
        stats["reconnects"] += fuzzer.reconnects
        stats["authorized"] += sum(
            1 for r in fuzzer.replies if isinstance(r, dict) and r["event"] == "authorized"
        )

    with limits(**UNLIMITED):
        run()
    print("fuzz stats", stats)
    assert stats["sent"] >= 3000, stats
    assert stats["reconnects"] > 0 and stats["authorized"] > 0, stats


@pytest.mark.django_db(transaction=True)
def test_arbitrary_messages_on_an_authorized_session(
    backend: str, make_user: Any, caplog: Any
) -> None:
    """The same hostile messages on a session that authorized first, with the
    in-process bus and with Redis: it is never closed (a failed re-authorization
    leaves it open) and never errors."""
    caplog.set_level(logging.INFO, logger="broker_ws")
    alice: DemoUser = asyncio.run(make_user("alice", ["1001"]))
    stats = {"sent": 0}

    @settings(max_examples=300 if backend == "memory" else 80, **FUZZ)
    @given(st.lists(messages(), min_size=10, max_size=40), pipeline_for(backend))
    def run(batch: list[Any], pipeline: int) -> None:
        fuzzer = Fuzzer({"valid": alice.token}, authorize_as="valid")

        async def body() -> None:
            try:
                await fuzzer.open()
                for part in chunks(batch, pipeline):
                    await fuzzer.send_batch(part)
                assert fuzzer.reconnects == 0
                await fuzzer.close()
            finally:
                await close_hubs()

        caplog.clear()
        asyncio.run(body())
        assert not broker_ws_errors(caplog), broker_ws_errors(caplog)
        stats["sent"] += fuzzer.sent

    with limits(**UNLIMITED):
        run()
    print("fuzz stats", backend, stats)
    assert stats["sent"] >= (3000 if backend == "memory" else 800), stats


@pytest.mark.django_db(transaction=True)
def test_hostile_floods_close_only_with_4006_after_rate_limited(
    make_user: Any, caplog: Any
) -> None:
    """With the rate limit on (20 messages/s, bursts of 40), pipelined floods of hostile
    messages: the only closes are 4006 right after a rate_limited error, and 4001 after
    a failed authorization; every other reply is as in the tests above."""
    caplog.set_level(logging.INFO, logger="broker_ws")
    alice: DemoUser = asyncio.run(make_user("alice", ["1001"]))
    stats = {"sent": 0, "rate_limited": 0}

    @settings(max_examples=60, **FUZZ)
    @given(st.lists(messages(), min_size=30, max_size=90), st.sampled_from([10, 45, 90]))
    def run(batch: list[Any], pipeline: int) -> None:
        fuzzer = Fuzzer({"valid": alice.token}, allow_rate_limit=True)

        async def body() -> None:
            try:
                await fuzzer.open()
                for part in chunks(batch, pipeline):
                    await fuzzer.send_batch(part)
                await fuzzer.close()
            finally:
                await close_hubs()

        caplog.clear()
        asyncio.run(body())
        assert not broker_ws_errors(caplog), broker_ws_errors(caplog)
        stats["sent"] += fuzzer.sent
        stats["rate_limited"] += fuzzer.rate_limited

    with limits(MAX_MESSAGES_PER_SECOND=20):
        run()
    print("fuzz stats", stats)
    assert stats["rate_limited"] > 5, stats


# --- two users: bob's fuzzed session never sees alice's login ----------------------------------


@pytest.mark.django_db(transaction=True)
def test_fuzzed_session_never_receives_another_users_login(
    backend: str, make_user: Any, caplog: Any
) -> None:
    """bob's authorized session is fuzzed with subscribe/unsubscribe/authorization/resume
    messages (alice's token, resume naming 1001, ...) while account frames for alice's
    login 1001 are pushed; alice gets each of them, bob none, and alice's token on
    bob's session is refused with user_mismatch."""
    caplog.set_level(logging.INFO, logger="broker_ws")
    alice: DemoUser = asyncio.run(make_user("alice", ["1001"]))
    bob: DemoUser = asyncio.run(make_user("bob", ["2001"]))
    alice_refresh = asyncio.run(database_sync_to_async(_create_refresh)(alice.user_id))
    tokens = {"valid": bob.token, "alice": alice.token, "alice-refresh": alice_refresh}
    login_1001 = st.sampled_from(["1001", "1002", "2001"]) | logins
    bob_resumes = resumes | st.dictionaries(
        login_1001, st.integers(min_value=0, max_value=50), min_size=1, max_size=3
    )
    bob_tokens = st.sampled_from([Token(), Token("alice"), Token("alice-refresh")])
    bob_messages = st.one_of(
        st.fixed_dictionaries(
            {"event": st.sampled_from(["subscribe", "unsubscribe"])},
            optional={"data": json_values | st.lists(symbols | login_1001, max_size=6)},
        ),
        st.fixed_dictionaries(
            {"authorization": bob_tokens | any_text | jwt_like | json_values},
            optional={"resume": bob_resumes},
        ),
        st.fixed_dictionaries({"authorization": st.just(Token("alice"))}),
        st.fixed_dictionaries({"resume": bob_resumes}),
        messages(),
    )
    # Each step: some pushes for 1001, made while bob's pipelined messages are handled.
    steps = st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3), st.lists(bob_messages, min_size=1, max_size=5)
        ),
        min_size=3,
        max_size=12,
    )
    stats = {"pushed": 0, "mismatch": 0, "sent": 0}

    @settings(max_examples=150 if backend == "memory" else 50, **FUZZ)
    @given(steps)
    def run(batch: list[tuple[int, list[Any]]]) -> None:
        bob_session = Fuzzer(tokens, authorize_as="valid", forbidden_login="1001")
        alice_session = Client()

        async def body() -> None:
            try:
                await alice_session.connect()
                authorized = await alice_session.authorize(alice.token)
                seq = authorized["seq"]["1001"]
                await bob_session.open()
                pushed = 0

                async def push(count: int) -> None:
                    nonlocal pushed
                    for _ in range(count):
                        await anotify(f"for alice {pushed}", login="1001")
                        pushed += 1

                for count, messages_ in batch:
                    size = len(messages_) if backend == "memory" else 1  # see pipeline_for
                    for part in chunks(messages_, size):
                        await asyncio.gather(push(count), bob_session.send_batch(part))
                        count = 0
                # alice got every frame, in order: the hub has fanned them all out.
                for i in range(pushed):
                    frame = await alice_session.recv()
                    assert frame[:3] == ["n", "1001", seq + i + 1], frame
                    assert frame[4] == f"for alice {i}", frame
                # Marker for bob after them: nothing of 1001 may come before it.
                await anotify("marker for bob", login="2001")
                while True:
                    text = await bob_session.client.recv_text()  # type: ignore[union-attr]
                    frame = check_reply(text)
                    assert not (isinstance(frame, list) and frame[1] == "1001"), frame
                    if (
                        isinstance(frame, list)
                        and frame[:2] == ["n", "2001"]
                        and (frame[4] == "marker for bob")
                    ):
                        break
                assert bob_session.reconnects == 0
                stats["pushed"] += pushed
                stats["sent"] += bob_session.sent
                stats["mismatch"] += sum(
                    1
                    for r in bob_session.replies
                    if isinstance(r, dict)
                    and r["event"] == "error"
                    and r["data"]["code"] == "user_mismatch"
                )
                await bob_session.close()
                await alice_session.close()
            finally:
                await close_hubs()

        caplog.clear()
        asyncio.run(body())
        assert not broker_ws_errors(caplog), broker_ws_errors(caplog)

    with limits(**UNLIMITED):
        run()
    print("fuzz stats", backend, stats)
    assert stats["pushed"] > 100 and stats["mismatch"] > 10, stats


@pytest.mark.django_db(transaction=True)
async def test_other_users_token_on_authorized_session_is_user_mismatch(
    client_factory: Any, make_user: Any
) -> None:
    """alice's valid token, with or without resume naming her login, on bob's
    authorized session: user_mismatch, bob's session stays and learns nothing of 1001."""
    alice = await make_user("alice", ["1001"])
    bob = await make_user("bob", ["2001"])
    await anotify("alice's secret", login="1001")
    session = await client_factory()
    await session.authorize(bob.token)
    for message in (
        {"authorization": alice.token},
        {"authorization": alice.token, "resume": {"1001": 0}},
        {"authorization": bob.token, "resume": {"1001": 0}},
    ):
        await session.send(message)
        reply = await session.recv()
        if message["authorization"] == alice.token:
            assert reply["event"] == "error" and reply["data"]["code"] == "user_mismatch", reply
        else:
            assert reply["event"] == "authorized" and reply["data"]["logins"] == ["2001"], reply
        await session.send("ping")
        assert await session.recv_text() == "pong"


# --- forged tokens not covered by tests/test_protocol.py ----------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = "=" * (-len(header) % 4)
    head = orjson.loads(base64.urlsafe_b64decode(header + pad))
    pad = "=" * (-len(payload) % 4)
    return head, orjson.loads(base64.urlsafe_b64decode(payload + pad)), signature


def _hs_sign(header: dict[str, Any], payload: dict[str, Any], digest: Any = hashlib.sha256) -> str:
    """A JWT with exactly this header and payload, HMAC-signed with the real key."""
    signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(payload))}"
    key = django_settings.SIMPLE_JWT["SIGNING_KEY"].encode()
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64url(signature)}"


def _unsigned_change(token: str, **changes: Any) -> str:
    """``token`` with claims changed and its original signature kept."""
    header, payload, signature = _segments(token)
    payload.update(changes)
    return f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(payload))}.{signature}"


def _without(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k != name}


def forge(case: str, alice: DemoUser, bob: DemoUser) -> str:
    header, claims, signature = _segments(alice.token)
    if case == "rs256-header-hs256-signature":
        return _hs_sign({"alg": "RS256", "typ": "JWT"}, claims)
    if case == "rs256-header-hs512-signature":
        return _hs_sign({"alg": "RS256", "typ": "JWT"}, claims, hashlib.sha512)
    if case == "tampered-user-id":
        return _unsigned_change(alice.token, user_id=bob.user_id)
    if case == "tampered-user-id-as-string":
        return _unsigned_change(alice.token, user_id=str(bob.user_id))
    if case == "tampered-exp":
        return _unsigned_change(alice.token, exp=claims["exp"] + 86_400)
    if case == "tampered-token-type":
        return _unsigned_change(bob.refresh, token_type="access")
    if case == "huge-forged-under-limit":
        size, target = 1000, LIMIT - 100  # the message is the token plus ~20 bytes
        for _ in range(5):  # grow the padding until the token is just under the limit
            padded = {**claims, "pad": "A" * size}
            forged = jwt.encode(padded, "not-the-secret-key-" * 3, algorithm="HS256")
            size += (target - len(forged)) * 3 // 4
        assert LIMIT - 200 < len(forged) + 20 < LIMIT, len(forged)
        return forged
    if case == "huge-signature-under-limit":
        return alice.token + "A" * (LIMIT - 100 - len(alice.token))
    if case == "no-user-id-claim":
        return _hs_sign(header, _without(claims, "user_id"))
    if case == "null-user-id-claim":
        return _hs_sign(header, {**claims, "user_id": None})
    if case == "no-token-type-claim":
        return _hs_sign(header, _without(claims, "token_type"))
    if case == "no-exp-claim":
        return _hs_sign(header, _without(claims, "exp"))
    raise AssertionError(case)


FORGED = [
    "rs256-header-hs256-signature",
    "rs256-header-hs512-signature",
    "tampered-user-id",
    "tampered-user-id-as-string",
    "tampered-exp",
    "tampered-token-type",
    "huge-forged-under-limit",
    "huge-signature-under-limit",
    "no-user-id-claim",
    "null-user-id-claim",
    "no-token-type-claim",
    "no-exp-claim",
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", FORGED)
async def test_forged_token_is_refused(
    client_factory: Any, make_user: Any, caplog: Any, case: str
) -> None:
    """Forged tokens test_protocol.py does not cover: auth_failed, then close 4001."""
    caplog.set_level(logging.INFO, logger="broker_ws")
    alice = await make_user("alice", ["1001"])
    bob = await make_user("bob", ["2001"])
    token = forge(case, alice, bob)
    client = await client_factory()
    await client.send({"authorization": token})
    text = await client.recv_text()
    reply = orjson.loads(text)
    assert reply["event"] == "error", reply
    assert reply["data"]["code"] == "auth_failed", reply
    message = await client.ws.receive_output(TIMEOUT)
    assert message == {"type": "websocket.close", "code": 4001}, message
    assert not broker_ws_errors(caplog), broker_ws_errors(caplog)


@pytest.mark.django_db(transaction=True)
async def test_forging_helper_signs_like_simplejwt(client_factory: Any, make_user: Any) -> None:
    """Control for the cases above: alice's claims re-signed by the helper, unchanged,
    are accepted, so each refusal above is due to what the case changed."""
    alice = await make_user("alice", ["1001"])
    header, claims, _ = _segments(alice.token)
    assert _hs_sign(header, claims) == alice.token
    client = await client_factory()
    data = await client.authorize(_hs_sign(header, claims))
    assert data["logins"] == ["1001"]


# --- subscription state under arbitrary subscribe/unsubscribe runs ----------------------------

MODEL_SYMBOLS = ["A", "B", "C/D", "#E", "F F"]
HELD = ["A", "#E"]  # held all along by a second session on the same hub
MARK = "MARK"


@pytest.mark.django_db(transaction=True)
def test_quotes_reach_exactly_the_symbols_a_session_holds(
    backend: str, make_user: Any, caplog: Any
) -> None:
    """Arbitrary pipelined runs of subscribe/unsubscribe over a few symbols (also one a
    second session holds all along): afterwards a quote on every symbol reaches each
    session for exactly the symbols it holds, before a marker quote."""
    caplog.set_level(logging.INFO, logger="broker_ws")
    alice: DemoUser = asyncio.run(make_user("alice", ["1001"]))
    subsets = st.lists(st.sampled_from(MODEL_SYMBOLS), min_size=1, max_size=4)
    ops = st.lists(
        st.tuples(st.sampled_from(["subscribe", "unsubscribe"]), subsets), min_size=5, max_size=40
    )
    counter = iter(range(10**9))
    stats = {"examples": 0, "ops": 0}

    @settings(max_examples=300 if backend == "memory" else 100, **FUZZ)
    @given(ops, pipeline_for(backend))
    def run(batch: list[tuple[str, list[str]]], pipeline: int) -> None:
        ts = 1_800_000_000_000 + next(counter)
        fuzzed, holder = Client(), Client()
        held: set[str] = set()
        for event, symbols_ in batch:
            if event == "subscribe":
                held.update(symbols_)
            else:
                held.difference_update(symbols_)

        async def received_until_marker(client: Client) -> set[str]:
            got = set()
            while True:
                frame = await client.recv()
                assert isinstance(frame, list) and frame[0] == "t", frame
                if frame[4] != ts:
                    continue  # a snapshot of an earlier example's quote
                if frame[1] == MARK:
                    return got
                assert frame[1] not in got, f"{frame[1]} delivered twice"
                got.add(frame[1])

        async def body() -> None:
            try:
                for client in (fuzzed, holder):
                    await client.connect()
                    await client.authorize(alice.token)
                await holder.subscribe(*HELD, MARK)
                await fuzzed.subscribe(MARK)
                model = {MARK}
                new = {MARK}  # symbols whose snapshot may follow the last reply
                for part in chunks(batch, pipeline):
                    for event, symbols_ in part:
                        await fuzzed.send({"event": event, "data": symbols_})
                    for event, symbols_ in part:
                        reply = await fuzzed.recv()
                        while isinstance(reply, list):  # snapshots follow `subscribed`
                            assert reply[0] == "t" and reply[1] in new, (reply, new)
                            new.discard(reply[1])
                            reply = await fuzzed.recv()
                        unique = list(dict.fromkeys(symbols_))
                        assert reply == {"event": event + "d", "data": unique}, reply
                        if event == "subscribe":
                            new = set(unique) - model
                            model.update(unique)
                        else:
                            new = set()
                            model.difference_update(unique)
                await fuzzed.send("ping")
                while (text := await fuzzed.recv_text()) != "pong":
                    frame = orjson.loads(text)  # snapshots after the last `subscribed`
                    assert frame[0] == "t" and frame[1] in new, (frame, new)
                    new.discard(frame[1])
                assert model == held | {MARK}
                for symbol in [*MODEL_SYMBOLS, MARK]:
                    await apublish_quote(symbol, 1.0, 2.0, ts=ts)
                assert await received_until_marker(fuzzed) == held
                assert await received_until_marker(holder) == set(HELD)
                await fuzzed.close()
                await holder.close()
            finally:
                await close_hubs()

        caplog.clear()
        asyncio.run(body())
        assert not broker_ws_errors(caplog), broker_ws_errors(caplog)
        stats["examples"] += 1
        stats["ops"] += len(batch)

    with limits(**UNLIMITED):
        run()
    print("fuzz stats", backend, stats)
    assert stats["ops"] >= (2000 if backend == "memory" else 600), stats


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "bus",
    [
        "memory",
        "redis",
    ],
)
async def test_resubscribe_while_a_release_waits_for_the_hub_lock(
    bus: str, client_factory: Any, make_user: Any
) -> None:
    """Pipelined: subscribe A, subscribe B, unsubscribe B, subscribe C/D (a new symbol:
    the hub holds its lock across the bus round trip, and B's release waits for it),
    subscribe [B, F F]: every reply is the expected one and quotes of B and F F arrive."""
    config = redis_settings(**UNLIMITED) if bus == "redis" else None
    try:
        with limits(**(config or UNLIMITED)):
            alice = await make_user("alice", ["1001"])
            session = await client_factory()
            await session.authorize(alice.token)
            steps = [
                ("subscribe", ["A"]),
                ("subscribe", ["B"]),
                ("unsubscribe", ["B"]),
                ("subscribe", ["C/D"]),
                ("subscribe", ["B", "F F"]),
            ]
            for event, data in steps:
                await session.send({"event": event, "data": data})
            for event, data in steps:
                assert await session.recv() == {"event": event + "d", "data": data}
            await apublish_quote("B", 1.0, 2.0, ts=1)
            await apublish_quote("F F", 3.0, 4.0, ts=2)
            assert await session.recv() == ["t", "B", 1.0, 2.0, 1]
            assert await session.recv() == ["t", "F F", 3.0, 4.0, 2]
            await close_hubs()
    finally:
        if config is not None:
            delete_prefix(config["KEY_PREFIX"])
