"""broker_ws.wire.frames: pure functions from data to protocol v1 frame text."""

from __future__ import annotations

import datetime as dt
import enum
import time
import uuid
from decimal import Decimal

import orjson

from broker_ws.wire import frames


class Side(enum.Enum):
    BUY = "buy"


def test_quote_layout():
    """A quote is the compact array ["t", symbol, bid, ask, ts_ms]."""
    assert frames.quote("EURUSD", 1.0845, 1.0847, 1700000000123) == (
        '["t","EURUSD",1.0845,1.0847,1700000000123]'
    )


def test_quote_is_an_array_with_marker_first():
    """A quote frame starts with '[' so clients tell it from control replies."""
    text = frames.quote("BTC/USD", 64000.5, 64001, 1)
    assert text.startswith('["t",')
    assert orjson.loads(text) == ["t", "BTC/USD", 64000.5, 64001, 1]


def test_quote_keeps_exotic_symbols_verbatim():
    """Symbols with spaces, slashes and non-ASCII letters are written exactly."""
    for symbol in ("US 500", "#AAPL", "EURUSD.m", "日経225", "Ä/€"):
        assert orjson.loads(frames.quote(symbol, 1, 2, 3))[1] == symbol


def test_dumps_decimal_keeps_its_digits():
    """Decimal('10000.10') stays 10000.10 on the wire, never through float."""
    assert frames.dumps([Decimal("10000.10")]) == b"[10000.10]"


def test_dumps_decimal_does_not_round_through_float():
    """A Decimal with more digits than a float holds is written exactly."""
    value = Decimal("12345678901234567.123456789")
    assert frames.dumps(value) == b"12345678901234567.123456789"


def test_dumps_decimal_exponent_is_written_positionally():
    """A Decimal in exponent form is written as a plain JSON number."""
    assert frames.dumps(Decimal("1E+3")) == b"1000"
    assert frames.dumps(Decimal("-0.000010")) == b"-0.000010"


def test_dumps_non_finite_decimal_is_null():
    """NaN and infinite Decimals, which JSON cannot carry, become null."""
    assert frames.dumps([Decimal("NaN"), Decimal("Infinity")]) == b"[null,null]"


def test_dumps_aware_datetime_is_epoch_ms():
    """An aware datetime becomes epoch milliseconds."""
    value = dt.datetime(2024, 1, 1, 0, 0, 0, 123000, tzinfo=dt.UTC)
    assert frames.dumps([value]) == b"[1704067200123]"


def test_dumps_datetime_with_offset_is_epoch_ms():
    """A datetime in another zone becomes the same instant in epoch ms."""
    value = dt.datetime(2024, 1, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert orjson.loads(frames.dumps(value)) == 1704067200000


def test_dumps_naive_datetime_is_taken_as_utc():
    """A naive datetime is read as UTC."""
    assert orjson.loads(frames.dumps(dt.datetime(2024, 1, 1))) == 1704067200000


def test_dumps_other_values_are_normalised():
    """Dates become ISO strings, enums their value, UUIDs their string form."""
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert orjson.loads(frames.dumps([dt.date(2024, 2, 29), Side.BUY, ident])) == [
        "2024-02-29",
        "buy",
        "12345678-1234-5678-1234-567812345678",
    ]


def test_to_epoch_ms_passes_numbers_through():
    """A number is taken as epoch ms already."""
    assert frames.to_epoch_ms(1700000000123) == 1700000000123


def test_to_epoch_ms_none_is_now():
    """None means now, in epoch ms."""
    before = time.time_ns() // 1_000_000
    value = frames.to_epoch_ms(None)
    after = time.time_ns() // 1_000_000
    assert before <= value <= after


def test_account_frame_layout():
    """account_parts + join_account give [marker, login, seq, ...fields]."""
    head, tail = frames.account_parts("b", "1001", ["USD", Decimal("10000.10"), 5])
    assert frames.join_account(head, 42, tail) == '["b","1001",42,"USD",10000.10,5]'


def test_account_frame_without_fields():
    """An account frame with no fields is [marker, login, seq]."""
    head, tail = frames.account_parts("o", "1001", [])
    assert orjson.loads(frames.join_account(head, 7, tail)) == ["o", "1001", 7]


def test_account_parts_are_reusable_for_any_seq():
    """The same parts splice any sequence number in without re-encoding."""
    head, tail = frames.account_parts("a", "L 1", [Side.BUY])
    assert [orjson.loads(frames.join_account(head, seq, tail))[2] for seq in (1, 2, 10**12)] == [
        1,
        2,
        10**12,
    ]


def test_account_frame_datetime_field_is_epoch_ms():
    """A datetime field of an account frame becomes epoch ms."""
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    head, tail = frames.account_parts("b", "1001", [when])
    assert orjson.loads(frames.join_account(head, 1, tail)) == ["b", "1001", 1, 1704067200000]


def test_notification_to_login_layout():
    """A notification to a login is ["n", login, seq, level, text, ts_ms]."""
    head, tail = frames.notification_parts("warning", "margin call", 1700000000000, "1001")
    assert orjson.loads(frames.join_account(head, 3, tail)) == [
        "n",
        "1001",
        3,
        "warning",
        "margin call",
        1700000000000,
    ]


def test_broadcast_notification_layout():
    """A broadcast notification is ["n", null, null, level, text, ts_ms]."""
    assert frames.broadcast_notification("info", "market closes", 1700000000000) == (
        '["n",null,null,"info","market closes",1700000000000]'
    )


def test_error_reply_is_an_object():
    """An error reply is {"event":"error","data":{"code":...,"message":...}}."""
    reply = orjson.loads(frames.error("bad_json", "message is not valid JSON"))
    assert reply == {
        "event": "error",
        "data": {"code": "bad_json", "message": "message is not valid JSON"},
    }


def test_error_reply_carries_extras():
    """Extra keyword arguments of an error land in its data object."""
    reply = orjson.loads(frames.error("invalid_symbols", "nope", symbols=["", "x"]))
    assert reply["data"] == {"code": "invalid_symbols", "message": "nope", "symbols": ["", "x"]}


def test_control_reply_is_an_object():
    """A control reply starts with '{' and has event and data."""
    text = frames.control("subscribed", ["EURUSD"])
    assert text.startswith("{")
    assert orjson.loads(text) == {"event": "subscribed", "data": ["EURUSD"]}


def test_authorized_reply_layout():
    """The authorized reply carries user, logins, expires (ms), seq and epoch per
    login, and the protocol revision."""
    reply = orjson.loads(
        frames.authorized(
            "alice",
            ("1001", "1002"),
            1700000900000,
            {"1001": 4, "1002": 0},
            {"1001": "9f2c4e1a0b3d5f67", "1002": ""},
            "1.1",
        )
    )
    assert reply == {
        "event": "authorized",
        "data": {
            "user": "alice",
            "logins": ["1001", "1002"],
            "expires": 1700000900000,
            "seq": {"1001": 4, "1002": 0},
            "epoch": {"1001": "9f2c4e1a0b3d5f67", "1002": ""},
            "protocol": "1.1",
        },
    }


def test_heartbeat_layout():
    """``["h", ts_ms, {login: seq}]``."""
    assert orjson.loads(frames.heartbeat(1700000900000, {"1001": 4})) == [
        "h",
        1700000900000,
        {"1001": 4},
    ]


def test_account_parts_says_who_numbers_account_frames():
    """The seq is spliced in by the outbox (in the database), not by Redis."""
    doc = frames.account_parts.__doc__ or ""
    assert "outbox" in doc and "in Redis" not in doc
