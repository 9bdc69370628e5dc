"""broker_ws.checks: one test per system check id, plus the demo settings."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks
from django.test import override_settings

from broker_ws.checks import check_settings
from tests.conftest import broker_ws_settings


def _ids(**overrides: Any) -> list[str]:
    """Check ids reported for the test BROKER_WS with ``overrides``."""
    with override_settings(BROKER_WS=broker_ws_settings(**overrides)):
        return [message.id for message in check_settings()]


def test_check_demo_settings_have_no_errors():
    """The demo project's BROKER_WS passes every check."""
    from project import settings as demo

    with override_settings(BROKER_WS=demo.BROKER_WS, CHANNEL_LAYERS=demo.CHANNEL_LAYERS):
        assert check_settings() == []


def test_check_test_settings_have_no_errors():
    """The test settings (the demo without Redis) pass every check."""
    assert check_settings() == []


def test_check_is_registered():
    """check_settings runs with Django's system checks (manage.py check)."""
    with override_settings(BROKER_WS=broker_ws_settings(NO_SUCH_KEY=1)):
        ids = [message.id for message in checks.run_checks()]
    assert "broker_ws.E002" in ids


def test_check_e001_not_a_dict():
    """BROKER_WS that is not a dict is E001."""
    with override_settings(BROKER_WS=[("REDIS_URL", None)]):
        assert [message.id for message in check_settings()] == ["broker_ws.E001"]


def test_check_e002_unknown_key():
    """A misspelt key is E002 and named in the message."""
    with override_settings(BROKER_WS=broker_ws_settings(MAX_SUBSCRIPTION=10)):
        messages = check_settings()
    assert [message.id for message in messages] == ["broker_ws.E002"]
    assert "MAX_SUBSCRIPTION" in messages[0].msg


def test_check_e003_login_resolver_not_importable():
    """A LOGIN_RESOLVER path that does not import is E003."""
    assert _ids(LOGIN_RESOLVER="project.broker.logins.no_such_function") == ["broker_ws.E003"]


def test_check_e003_login_resolver_not_callable():
    """A LOGIN_RESOLVER path naming something not callable is E003."""
    assert _ids(LOGIN_RESOLVER="broker_ws.conf.DEFAULTS") == ["broker_ws.E003"]


def test_check_e003_login_resolver_callable_is_accepted():
    """A callable LOGIN_RESOLVER, rather than a path, passes."""
    assert _ids(LOGIN_RESOLVER=lambda user: []) == []


def test_check_e003_login_resolver_none():
    """LOGIN_RESOLVER = None is reported as E003 rather than crashing the checks."""
    assert _ids(LOGIN_RESOLVER=None) == ["broker_ws.E003"]


def test_check_e004_symbols_wrong_type():
    """SYMBOLS that is neither None, a collection of strings nor a callable is E004."""
    assert _ids(SYMBOLS=42) == ["broker_ws.E004"]


def test_check_e004_symbols_with_non_strings():
    """A SYMBOLS list holding non-strings is E004."""
    assert _ids(SYMBOLS=["EURUSD", 1]) == ["broker_ws.E004"]


def test_check_e004_symbols_path_not_importable():
    """A SYMBOLS path that does not import is E004."""
    assert _ids(SYMBOLS="project.broker.no_such_module.allowed") == ["broker_ws.E004"]


def test_check_e004_symbols_list_is_accepted():
    """A list of symbol strings passes."""
    assert _ids(SYMBOLS=["EURUSD", "BTC/USD"]) == []


@pytest.mark.parametrize(
    "name",
    [
        "SYMBOL_MAX_LENGTH",
        "MAX_MESSAGE_BYTES",
        "MAX_SUBSCRIPTIONS",
        "HISTORY_SIZE",
        "REDIS_MAX_CONNECTIONS",
        "AUTH_TIMEOUT",
    ],
)
@pytest.mark.parametrize("value", [0, -1, "10", True, None])
def test_check_e005_not_a_positive_number(name, value):
    """Each numeric setting that is not a positive number is E005."""
    assert _ids(**{name: value}) == ["broker_ws.E005"]


def test_check_e005_max_subscriptions_not_an_integer():
    """A fractional MAX_SUBSCRIPTIONS, which cannot be a count, is E005."""
    assert _ids(MAX_SUBSCRIPTIONS=2.5) == ["broker_ws.E005"]


@pytest.mark.parametrize("prefix", ["", "a.b", "a_b", "p" * 21, "ü", None])
def test_check_e006_bad_key_prefix(prefix):
    """A KEY_PREFIX outside 1-20 letters, digits or '-' is E006."""
    assert _ids(KEY_PREFIX=prefix) == ["broker_ws.E006"]


def test_check_e007_bindings_not_a_list():
    """BINDINGS that is not a list is E007."""
    assert _ids(BINDINGS={"model": "broker.Balance"}) == ["broker_ws.E007"]


def test_check_e007_binding_missing_keys():
    """A binding without model, marker, login and fields is E007."""
    assert _ids(BINDINGS=[{"model": "broker.Balance", "marker": "b"}]) == ["broker_ws.E007"]


def test_check_e007_binding_unknown_model():
    """A binding naming a model that does not exist is E007."""
    binding = {"model": "broker.Nothing", "marker": "b", "login": "account.login", "fields": []}
    assert _ids(BINDINGS=[binding]) == ["broker_ws.E007"]


def test_check_e007_binding_bad_marker():
    """A binding whose marker is not an account marker is E007."""
    binding = {"model": "broker.Balance", "marker": "t", "login": "account.login", "fields": []}
    assert _ids(BINDINGS=[binding]) == ["broker_ws.E007"]


def test_check_e007_binding_fields_not_a_list():
    """A binding whose fields is not a list is E007."""
    binding = {
        "model": "broker.Balance",
        "marker": "b",
        "login": "account.login",
        "fields": "balance",
    }
    assert _ids(BINDINGS=[binding]) == ["broker_ws.E007"]


def test_check_e007_binding_model_not_a_string():
    """A binding whose model is not a string is E007 rather than a crash."""
    binding = {"model": 42, "marker": "b", "login": "account.login", "fields": []}
    assert _ids(BINDINGS=[binding]) == ["broker_ws.E007"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", 6379])
def test_check_e008_bad_redis_url(url):
    """A REDIS_URL that is not a redis://, rediss:// or unix:// URL is E008."""
    assert _ids(REDIS_URL=url) == ["broker_ws.E008"]


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache:6380", "unix:///tmp/redis.sock"]
)
def test_check_e008_good_redis_url(url):
    """Redis URLs of every supported scheme pass."""
    assert _ids(REDIS_URL=url) == []


def test_check_w001_redis_layer_without_redis_url():
    """A Redis channel layer with no BROKER_WS REDIS_URL is warning W001."""
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers, BROKER_WS=broker_ws_settings(REDIS_URL=None)):
        messages = check_settings()
    assert [(message.id, message.level) for message in messages] == [
        ("broker_ws.W001", checks.WARNING)
    ]
    # What it says is still true: the outbox numbers and carries account frames for
    # every process; only quotes and broadcasts stay in the publishing process.
    assert "number account frames inside each process" not in messages[0].msg
    assert "through the database outbox" in messages[0].msg


def test_check_w001_not_raised_with_redis_url():
    """A Redis channel layer with REDIS_URL set raises no warning."""
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
    with override_settings(
        CHANNEL_LAYERS=layers, BROKER_WS=broker_ws_settings(REDIS_URL="redis://127.0.0.1:6379/0")
    ):
        assert check_settings() == []


@pytest.mark.parametrize("origins", ["example.com", [1, 2], {"host": "example.com"}])
def test_check_e009_allowed_origins_not_a_list_of_patterns(origins: Any) -> None:
    """ALLOWED_ORIGINS that is not a list of host patterns is E009."""
    assert _ids(ALLOWED_ORIGINS=origins) == ["broker_ws.E009"]


def test_check_e009_allowed_origins_list_is_fine() -> None:
    """A list of host patterns passes."""
    assert _ids(ALLOWED_ORIGINS=["app.example.com", ".example.com"]) == []


@pytest.mark.parametrize("value", [0.5, 1e-3])
def test_check_e005_outbox_poll_interval_accepts_fractions(value: float) -> None:
    """Durations may be fractions of a second; counts may not."""
    assert _ids(OUTBOX_POLL_INTERVAL=value, AUTH_TIMEOUT=value) == []


@pytest.mark.parametrize(
    "field",
    ["balanse", "account.logn", "account.user.usernme", ""],
)
def test_check_e007_binding_field_path_that_does_not_exist(field: str) -> None:
    """A misspelt field or login path is E007, not an AttributeError at save time."""
    binding = {
        "model": "broker.Balance",
        "marker": "b",
        "login": "account.login",
        "fields": ["balance", field],
    }
    assert _ids(BINDINGS=[binding]) == ["broker_ws.E007"]


def test_check_e007_binding_paths_through_relations_and_callables_pass() -> None:
    """Paths through relations, properties and callables are accepted."""
    binding = {
        "model": "broker.Balance",
        "marker": "b",
        "login": "account.login",
        "fields": ["account.user.username", "account.pk", str],
    }
    assert _ids(BINDINGS=[binding]) == []


@pytest.mark.parametrize("value", [-1, "5", True, None])
def test_check_e005_drain_window_not_a_non_negative_number(value):
    assert "broker_ws.E005" in _ids(DRAIN_WINDOW=value)


def test_check_e005_drain_window_zero_turns_it_off():
    assert _ids(DRAIN_WINDOW=0, AUTH_FAILURE_MAX_DELAY=0, GC_RECLAIM_INTERVAL=0) == []


@pytest.mark.parametrize("value", [-1, 2.5, "200", True, None])
def test_check_e005_gc_freeze_every_not_a_non_negative_integer(value):
    assert "broker_ws.E005" in _ids(GC_FREEZE_EVERY=value)


@pytest.mark.parametrize("value", [-1, "3600", True, None])
def test_check_e005_gc_reclaim_interval_not_a_non_negative_number(value):
    assert "broker_ws.E005" in _ids(GC_RECLAIM_INTERVAL=value)


def test_check_gc_freeze_every_zero_turns_it_off():
    assert _ids(GC_FREEZE_EVERY=0) == []


@pytest.mark.parametrize(
    "name",
    [
        "MAX_UNAUTHENTICATED_PER_ADDRESS",
        "MAX_UNAUTHENTICATED",
        "AUTH_FAILURE_BURST",
        "CONNECT_BURST_PER_ADDRESS",
    ],
)
def test_check_e005_throttle_counts_must_be_positive(name):
    assert "broker_ws.E005" in _ids(**{name: 0})


@pytest.mark.parametrize("value", ["10.0.0.1", ["not-an-address"], [1], None])
def test_check_e011_trusted_proxies_not_a_list_of_networks(value):
    assert "broker_ws.E011" in _ids(TRUSTED_PROXIES=value)


def test_check_e011_trusted_proxies_addresses_and_networks_are_accepted():
    assert _ids(TRUSTED_PROXIES=["127.0.0.1", "10.0.0.0/8", "::1"]) == []


@pytest.mark.parametrize("value", [-1, "1000", True, None])
def test_check_e005_connects_per_second_not_a_non_negative_number(value):
    assert "broker_ws.E005" in _ids(CONNECTS_PER_SECOND_PER_ADDRESS=value)


def test_check_connects_per_second_zero_turns_the_admission_off():
    assert _ids(CONNECTS_PER_SECOND_PER_ADDRESS=0, CONNECT_BURST_PER_ADDRESS=1) == []


def test_check_w002_installed_server_libraries_are_in_the_tested_range():
    from broker_ws.checks import check_server_versions

    assert check_server_versions() == []


def test_check_w002_a_library_outside_the_tested_range(monkeypatch: pytest.MonkeyPatch):
    """An upgrade past the tested range (here: the range moved below what is installed)."""
    from importlib import metadata

    from broker_ws.checks import check_server_versions
    from broker_ws.servers import versions

    monkeypatch.setitem(versions.TESTED, "daphne", ((1,), (2,)))
    (message,) = check_server_versions()
    assert message.id == "broker_ws.W002"
    assert message.level == checks.WARNING
    assert f"daphne {metadata.version('daphne')} is installed" in message.msg
    assert "daphne>=1,<2" in message.msg
    assert "broker_ws.W002" in [m.id for m in checks.run_checks()]


def test_check_w002_reads_release_numbers_of_pre_releases_and_skips_absent_libraries(
    monkeypatch: pytest.MonkeyPatch,
):
    from broker_ws.servers import versions

    assert versions._release("26.10.0rc1") == (26, 10, 0)
    monkeypatch.setitem(versions.TESTED, "no-such-server-library", ((1,), (2,)))
    assert versions.untested() == []


def test_check_e007_checks_every_login_accessor_of_a_list():
    """A list of login paths is fine; one path in it that leads nowhere is E007, and so
    is an empty list."""
    good = {"model": "broker.Trade", "marker": "o", "login": ["account.login"], "fields": []}
    assert _ids(BINDINGS=[good]) == []
    bad = {**good, "login": ["account.login", "account.nope"]}
    assert _ids(BINDINGS=[bad]) == ["broker_ws.E007"]
    assert _ids(BINDINGS=[{**good, "login": []}]) == ["broker_ws.E007"]
