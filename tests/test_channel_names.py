"""broker_ws.wire.channel_names: symbols and logins to valid, collision-free group names."""

from __future__ import annotations

import random
import re

import pytest
from channels.layers import BaseChannelLayer
from django.test import override_settings

from broker_ws.wire import channel_names

GROUP_NAME = re.compile(r"^[a-zA-Z0-9\-_.]+$")

EXOTIC = [
    "EURUSD",
    "eurusd",
    "BTC/USD",
    "btc/usd",
    "btc_usd",
    "btc-usd",
    "btc.usd",
    "btc usd",
    "#AAPL",
    "EURUSD.m",
    "US 500",
    "_2F",
    "_",
    "__",
    "-",
    ".",
    "日経225",
    "Ä/€",
    "😀",
    "x" * 200,
    "y" * 33,
]


def _generated_symbols(count: int = 2000) -> list[str]:
    """A reproducible mix of ASCII punctuation, letters and non-ASCII symbols."""
    rng = random.Random(20240101)
    alphabet = "abcXYZ019-_./# %:+@*?=&\\'\"~^|äÄéß€£¥日経中文😀"
    symbols = {
        rng.choice(["", "x"]) + "".join(rng.choices(alphabet, k=rng.randint(1, 12)))
        for _ in range(count)
    }
    symbols.update(rng.choice(alphabet) * rng.randint(30, 300) for _ in range(50))
    symbols.update(EXOTIC)
    return sorted(symbols)


SYMBOLS = _generated_symbols()


def _is_valid_group_name(name: str) -> bool:
    return bool(GROUP_NAME.match(name)) and len(name) < 100


@pytest.mark.parametrize("symbol", EXOTIC)
def test_encode_round_trips(symbol):
    """decode(encode(s)) gives back s exactly."""
    assert channel_names.decode(channel_names.encode(symbol)) == symbol


def test_encode_round_trips_generated_symbols():
    """decode inverts encode on a large generated set of symbols."""
    assert all(channel_names.decode(channel_names.encode(symbol)) == symbol for symbol in SYMBOLS)


def test_encode_keeps_letters_digits_and_dash():
    """ASCII letters, digits and '-' are kept as they are."""
    assert channel_names.encode("EURusd-2024") == "EURusd-2024"


def test_encode_escapes_underscore_and_slash_differently():
    """'btc_usd' and 'btc/usd' do not collide."""
    assert channel_names.encode("btc_usd") != channel_names.encode("btc/usd")
    assert channel_names.quote_channel("btc_usd") != channel_names.quote_channel("btc/usd")


def test_encode_escapes_dot():
    """'.' is escaped, so it stays free as the name's part separator."""
    assert "." not in channel_names.encode("EURUSD.m")


def test_encode_does_not_fold_case():
    """'EURUSD' and 'eurusd' get different names."""
    assert channel_names.quote_channel("EURUSD") != channel_names.quote_channel("eurusd")


def test_encode_is_injective_on_generated_symbols():
    """Distinct symbols always encode to distinct strings."""
    encoded = {channel_names.encode(symbol) for symbol in SYMBOLS}
    assert len(encoded) == len(SYMBOLS)


@pytest.mark.parametrize("symbol", EXOTIC)
def test_quote_group_is_a_valid_channels_group_name(symbol):
    """Every quote group name matches Channels' pattern and is under 100 characters."""
    name = channel_names.quote_channel(symbol)
    assert _is_valid_group_name(name), name
    assert BaseChannelLayer().require_valid_group_name(name)


def test_group_names_are_valid_for_generated_symbols():
    """Quote, login and user group names are valid for every generated value."""
    names = [
        make(value)
        for value in SYMBOLS
        for make in (
            channel_names.quote_channel,
            channel_names.login_channel,
            channel_names.user_channel,
        )
    ]
    invalid = [name for name in names if not _is_valid_group_name(name)]
    assert invalid == []


def test_group_names_are_valid_with_longest_key_prefix():
    """Names stay valid with the longest KEY_PREFIX the checks allow (20 chars)."""
    with override_settings(BROKER_WS={"KEY_PREFIX": "p" * 20}):
        names = [channel_names.quote_channel(symbol) for symbol in SYMBOLS]
        names.append(channel_names.everyone_channel())
    assert all(_is_valid_group_name(name) for name in names)


def test_quote_groups_are_distinct_for_generated_symbols():
    """Distinct symbols give distinct quote group names, hashed or not."""
    names = {channel_names.quote_channel(symbol) for symbol in SYMBOLS}
    assert len(names) == len(SYMBOLS)


def test_group_kinds_do_not_collide():
    """The same value gets different quote, login and user group names."""
    for value in ("1001", "x" * 200):
        names = {
            channel_names.quote_channel(value),
            channel_names.login_channel(value),
            channel_names.user_channel(value),
        }
        assert len(names) == 3


def test_long_symbol_is_hashed():
    """A 200-character symbol gets a hashed name of the hashed kind."""
    name = channel_names.quote_channel("x" * 200)
    assert _is_valid_group_name(name)
    assert channel_names.encode("x" * 200) not in name
    assert channel_names.parse_channel(name) == (channel_names.QUOTE, None)


def test_long_non_ascii_symbol_is_hashed():
    """A short non-ASCII symbol whose escapes would not fit is hashed."""
    symbol = "日" * 40  # 40 characters, 120 bytes, 360 escaped characters
    name = channel_names.quote_channel(symbol)
    assert _is_valid_group_name(name)
    assert channel_names.parse_channel(name) == (channel_names.QUOTE, None)


def test_long_symbols_sharing_a_prefix_get_distinct_hashes():
    """Long symbols differing only in their last character get distinct names."""
    base = "S" * 199
    assert channel_names.quote_channel(base + "a") != channel_names.quote_channel(base + "b")


def test_hashed_name_cannot_equal_an_encoded_name():
    """A hashed name and an encoded name of the same kind never coincide."""
    hashed = channel_names.quote_channel("z" * 200)
    digest = hashed.rsplit(".", 1)[1]
    assert channel_names.quote_channel(digest) != hashed


def test_short_symbol_is_not_hashed():
    """A short symbol's name is readable: prefix, kind, encoded symbol."""
    with override_settings(BROKER_WS={"KEY_PREFIX": "bws"}):
        assert channel_names.quote_channel("BTC/USD") == "bws.q.BTC_2FUSD"


@pytest.mark.parametrize("symbol", [s for s in EXOTIC if len(s) < 30])
def test_parse_group_recovers_short_values(symbol):
    """parse_channel gives back the kind and value of a name made here."""
    assert channel_names.parse_channel(channel_names.quote_channel(symbol)) == (
        channel_names.QUOTE,
        symbol,
    )
    assert channel_names.parse_channel(channel_names.login_channel(symbol)) == (
        channel_names.LOGIN,
        symbol,
    )
    assert channel_names.parse_channel(channel_names.user_channel(symbol)) == (
        channel_names.USER,
        symbol,
    )


def test_key_prefix_is_read_on_every_call():
    """KEY_PREFIX is read lazily, so override_settings changes the names."""
    with override_settings(BROKER_WS={"KEY_PREFIX": "one"}):
        first = channel_names.quote_channel("EURUSD")
    with override_settings(BROKER_WS={"KEY_PREFIX": "two"}):
        second = channel_names.quote_channel("EURUSD")
    assert (first, second) == ("one.q.EURUSD", "two.q.EURUSD")
