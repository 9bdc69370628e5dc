"""System checks for ``BROKER_WS``: bad configuration is reported by
``manage.py check`` (and at server start), never raised at import.

IDs: E001 not a dict, E002 unknown key, E003 LOGIN_RESOLVER, E004 SYMBOLS,
E005 numbers, E006 KEY_PREFIX, E007 BINDINGS, E008 REDIS_URL,
E009 ALLOWED_ORIGINS, E010 PRICE_ALERTS, E011 TRUSTED_PROXIES,
E012 REDIS_URL set without the redis extra installed, E013 TOKEN_AUTHENTICATOR,
E014 COMMANDS,
E015 INSTRUMENT_STATUSES, E016 SYMBOL_ENTITLEMENTS,
E017 STATE_MARKERS / STATE_MAX_RATE,
W001 Redis channel layer without REDIS_URL,
W002 a server library outside the versions broker_ws was tested with.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from broker_ws.conf import DEFAULTS, conf
from broker_ws.wire import frames

_PREFIX = re.compile(r"^[a-zA-Z0-9-]{1,20}$")
_COUNTS = (
    "SYMBOL_MAX_LENGTH",
    "MAX_MESSAGE_BYTES",
    "MAX_SUBSCRIPTIONS",
    "MAX_MESSAGES_PER_SECOND",
    "MAX_SESSIONS_PER_LOGIN",
    "HISTORY_SIZE",
    "MAX_PENDING_COMMANDS",
    "REDIS_MAX_CONNECTIONS",
    "SLOW_CONSUMER_BUFFER",
    "SLOW_CONSUMER_MAX_PENDING",
    "MAX_UNAUTHENTICATED_PER_ADDRESS",
    "MAX_UNAUTHENTICATED",
    "AUTH_FAILURE_BURST",
    "CONNECT_BURST_PER_ADDRESS",
)
_SECONDS = ("AUTH_TIMEOUT", "OUTBOX_POLL_INTERVAL", "PRESENCE_INTERVAL")
#: Durations where 0 turns the feature off.
_SECONDS_OR_OFF = (
    "DRAIN_WINDOW",
    "AUTH_FAILURE_MAX_DELAY",
    "GC_RECLAIM_INTERVAL",
    "HEARTBEAT_INTERVAL",
)
#: Rates (per second) where 0 turns the feature off.
_RATES_OR_OFF = ("CONNECTS_PER_SECOND_PER_ADDRESS",)
#: Counts where 0 turns the feature off.
_COUNTS_OR_OFF = ("GC_FREEZE_EVERY", "PRESENCE_METRICS_LOGINS")
#: Each of those, the types it takes and how the error says what it must be.
_OR_OFF: tuple[tuple[tuple[str, ...], Any, str], ...] = (
    (_SECONDS_OR_OFF, int | float, "a number of seconds (0 turns it off)"),
    (_RATES_OR_OFF, int | float, "a number per second (0 turns it off)"),
    (_COUNTS_OR_OFF, int, "an integer >= 0 (0 turns it off)"),
)


def check_settings(app_configs: Iterable[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate every BROKER_WS setting."""
    user = getattr(settings, "BROKER_WS", {})
    if not isinstance(user, dict):
        return [Error("BROKER_WS must be a dict.", id="broker_ws.E001")]
    errors: list[CheckMessage] = []
    for key in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            Error(
                f"BROKER_WS has an unknown key {key!r}.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id="broker_ws.E002",
            )
        )
    errors += _check_callable("LOGIN_RESOLVER", conf.LOGIN_RESOLVER, "broker_ws.E003")
    errors += _check_callable("TOKEN_AUTHENTICATOR", conf.TOKEN_AUTHENTICATOR, "broker_ws.E013")
    errors += _check_commands(conf.COMMANDS)
    errors += _check_statuses(conf.INSTRUMENT_STATUSES)
    if conf.SYMBOL_ENTITLEMENTS is not None:
        errors += _check_callable("SYMBOL_ENTITLEMENTS", conf.SYMBOL_ENTITLEMENTS, "broker_ws.E016")
    symbols = conf.SYMBOLS
    if isinstance(symbols, str):
        errors += _check_callable("SYMBOLS", symbols, "broker_ws.E004")
    elif (
        symbols is not None
        and not callable(symbols)
        and (
            not isinstance(symbols, list | tuple | set | frozenset)
            or not all(isinstance(s, str) for s in symbols)
        )
    ):
        errors.append(
            Error(
                "BROKER_WS['SYMBOLS'] must be None, a collection of strings, or a callable.",
                id="broker_ws.E004",
            )
        )
    # Raw values: the typed properties would raise on a non-number.
    for name in _COUNTS + _SECONDS:
        value = user.get(name, DEFAULTS[name])
        kinds = int if name in _COUNTS else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            what = "a positive integer" if name in _COUNTS else "a positive number of seconds"
            errors.append(Error(f"BROKER_WS['{name}'] must be {what}.", id="broker_ws.E005"))
    for names, kinds, what in _OR_OFF:
        for name in names:
            value = user.get(name, DEFAULTS[name])
            if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
                errors.append(Error(f"BROKER_WS['{name}'] must be {what}.", id="broker_ws.E005"))
    if not isinstance(conf.KEY_PREFIX, str) or not _PREFIX.match(conf.KEY_PREFIX):
        errors.append(
            Error(
                "BROKER_WS['KEY_PREFIX'] must be 1-20 letters, digits or '-'.",
                hint="It prefixes group names, which allow only [a-zA-Z0-9-_.].",
                id="broker_ws.E006",
            )
        )
    origins = conf.ALLOWED_ORIGINS
    if origins is not None and (
        not isinstance(origins, list | tuple | set | frozenset)
        or not all(isinstance(o, str) for o in origins)
    ):
        errors.append(
            Error(
                "BROKER_WS['ALLOWED_ORIGINS'] must be None or a list of host patterns.",
                hint='As in ALLOWED_HOSTS: ["app.example.com", ".example.com"]; a bare string '
                "would be read one character at a time.",
                id="broker_ws.E009",
            )
        )
    errors += _check_proxies(user.get("TRUSTED_PROXIES", DEFAULTS["TRUSTED_PROXIES"]))
    errors += _check_bindings(conf.BINDINGS)
    errors += _check_alerts(conf.PRICE_ALERTS)
    errors += _check_states(user)
    url = conf.REDIS_URL
    if url is not None and (
        not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://"))
    ):
        errors.append(
            Error(
                "BROKER_WS['REDIS_URL'] must be None or a redis://, rediss:// or unix:// URL.",
                id="broker_ws.E008",
            )
        )
    elif url is not None and importlib.util.find_spec("redis") is None:
        errors.append(
            Error(
                "BROKER_WS['REDIS_URL'] is set but redis-py is not installed.",
                hint="pip install 'broker-ws[redis]'",
                id="broker_ws.E012",
            )
        )
    errors += _check_layer(url)
    return errors


def _check_commands(declared: Any) -> list[CheckMessage]:
    from broker_ws.session.commands import name_problem

    if not isinstance(declared, dict):
        return [Error("BROKER_WS['COMMANDS'] must be a dict.", id="broker_ws.E014")]
    errors: list[CheckMessage] = []
    for name, handler in declared.items():
        problem = name_problem(name)
        if problem:
            errors.append(Error(f"BROKER_WS['COMMANDS']: {problem}.", id="broker_ws.E014"))
        else:
            errors += _check_callable(f"COMMANDS'][{name!r}", handler, "broker_ws.E014")
    return errors


def _check_statuses(declared: Any) -> list[CheckMessage]:
    """INSTRUMENT_STATUSES: a list of short lower-case names (E015)."""
    from broker_ws.publish.statuses import name_problem

    if not isinstance(declared, list | tuple | set | frozenset):
        return [
            Error(
                "BROKER_WS['INSTRUMENT_STATUSES'] must be a list of status names.",
                hint='For example ["auction", "pre_market"]; a bare string would be read one '
                "character at a time.",
                id="broker_ws.E015",
            )
        ]
    return [
        Error(f"BROKER_WS['INSTRUMENT_STATUSES']: {problem}.", id="broker_ws.E015")
        for name in declared
        if (problem := name_problem(name))
    ]


def _check_callable(name: str, value: Any, check_id: str) -> list[CheckMessage]:
    if callable(value):
        return []
    try:
        target = import_string(value)
    except Exception:  # ImportError, or AttributeError and the like for non-strings
        return [Error(f"BROKER_WS['{name}'] = {value!r} cannot be imported.", id=check_id)]
    if not callable(target):
        return [Error(f"BROKER_WS['{name}'] = {value!r} is not callable.", id=check_id)]
    return []


def _check_bindings(declared: Any) -> list[CheckMessage]:
    if not isinstance(declared, list | tuple):
        return [Error("BROKER_WS['BINDINGS'] must be a list of dicts.", id="broker_ws.E007")]
    errors: list[CheckMessage] = []
    for index, entry in enumerate(declared):
        where = f"BROKER_WS['BINDINGS'][{index}]"
        if not isinstance(entry, dict) or {"model", "marker", "login", "fields"} - set(entry):
            errors.append(
                Error(
                    f"{where} needs the keys model, marker, login and fields.", id="broker_ws.E007"
                )
            )
            continue
        try:
            model = apps.get_model(entry["model"])
        except (LookupError, ValueError, TypeError, AttributeError):
            model = None
            errors.append(Error(f"{where}: no model {entry['model']!r}.", id="broker_ws.E007"))
        if entry["marker"] not in frames.ACCOUNT_MARKERS:
            errors.append(
                Error(
                    f"{where}: marker must be one of {sorted(frames.ACCOUNT_MARKERS)}.",
                    id="broker_ws.E007",
                )
            )
        if entry.get("current") is not None and not isinstance(entry["current"], dict):
            errors.append(
                Error(f"{where}: current must be a dict of filters or None.", id="broker_ws.E007")
            )
        if not isinstance(entry["fields"], list | tuple):
            errors.append(Error(f"{where}: fields must be a list.", id="broker_ws.E007"))
        elif model is not None:
            login = entry["login"]
            logins = list(login) if isinstance(login, list | tuple) else [login]
            if not logins:
                errors.append(Error(f"{where}: login needs an accessor.", id="broker_ws.E007"))
            for accessor in [*logins, *entry["fields"]]:
                problem = _accessor_problem(model, accessor)
                if problem:
                    errors.append(Error(f"{where}: {problem}", id="broker_ws.E007"))
    return errors


def _check_alerts(value: Any) -> list[CheckMessage]:
    if value is None:
        return []
    from broker_ws.publish.alerts import AlertConfig

    try:
        config = AlertConfig.from_settings(value)
        fields = [config.symbol, config.price, config.condition, *config.armed]
        fields += [*config.triggered, *([config.triggered_at] if config.triggered_at else [])]
        for name in fields:
            config.model._meta.get_field(name)
    except Exception as exc:
        return [
            Error(
                f"BROKER_WS['PRICE_ALERTS'] cannot be used: {exc}",
                hint='A dict like {"model": "app.PriceAlert"}, with "symbol", "price", '
                '"condition", "armed", "triggered" and "triggered_at" where the model\'s '
                "fields are named otherwise (docs/settings.md).",
                id="broker_ws.E010",
            )
        ]
    return []


def _check_states(user: dict[str, Any]) -> list[CheckMessage]:
    """STATE_MARKERS: marker -> field names, markers free of every other frame's
    (the reserved ones, and the deployment's BINDINGS markers); STATE_MAX_RATE: a
    number >= 0 (E017)."""
    from broker_ws.publish.state import marker_problem

    errors: list[CheckMessage] = []
    rate = user.get("STATE_MAX_RATE", DEFAULTS["STATE_MAX_RATE"])
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
        errors.append(
            Error(
                "BROKER_WS['STATE_MAX_RATE'] must be a number per second (0: uncapped).",
                id="broker_ws.E017",
            )
        )
    declared = user.get("STATE_MARKERS", DEFAULTS["STATE_MARKERS"])
    if not isinstance(declared, dict):
        return [
            *errors,
            Error(
                "BROKER_WS['STATE_MARKERS'] must be a dict: marker -> list of field names.",
                hint='For example {"e": ["equity", "margin", "free_margin"]}.',
                id="broker_ws.E017",
            ),
        ]
    bindings = user.get("BINDINGS", [])
    bound = {
        entry.get("marker")
        for entry in (bindings if isinstance(bindings, list | tuple) else [])
        if isinstance(entry, dict)
    }
    for marker, names in declared.items():
        where = f"BROKER_WS['STATE_MARKERS'][{marker!r}]"
        problem = marker_problem(marker)
        if problem is None and marker in bound:
            problem = f"state marker {marker!r} is a BINDINGS marker"
        if problem:
            errors.append(Error(f"BROKER_WS['STATE_MARKERS']: {problem}.", id="broker_ws.E017"))
        if (
            not isinstance(names, list | tuple)
            or not names
            or not all(isinstance(name, str) and name for name in names)
            or len(set(names)) != len(names)
        ):
            errors.append(
                Error(
                    f"{where} must be a non-empty list of distinct field names.",
                    id="broker_ws.E017",
                )
            )
    return errors


def _accessor_problem(model: Any, accessor: Any) -> str | None:
    """Why ``accessor`` cannot be read from instances of ``model``, if it cannot.

    Attribute paths are followed through relations as far as they lead to
    models; past that (a property, a plain attribute) nothing is known.
    """
    if callable(accessor):
        return None
    if not isinstance(accessor, str) or not accessor:
        return f"{accessor!r} is neither an attribute path nor a callable."
    current = model
    for part in accessor.split("."):
        if current is None:
            return None
        if not hasattr(current, part):
            return f"{current.__name__} has no attribute {part!r} (in {accessor!r})."
        try:
            field = current._meta.get_field(part)
        except Exception:
            return None  # a property or method: checked when it runs
        current = field.related_model if field.is_relation else None
    return None


def _check_layer(url: Any) -> list[CheckMessage]:
    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    backend = str(layers.get("default", {}).get("BACKEND", ""))
    if "channels_redis" in backend and not url:
        return [
            Warning(
                "The channel layer uses Redis but BROKER_WS['REDIS_URL'] is not set: "
                "quotes published in one process reach only that process's sessions "
                "(account frames still reach every process, through the database outbox).",
                hint="Set BROKER_WS['REDIS_URL'] to the same Redis for multi-process deployments.",
                id="broker_ws.W001",
            )
        ]
    return []


def _check_proxies(value: Any) -> list[CheckMessage]:
    """TRUSTED_PROXIES: a list of IP addresses or networks."""
    import ipaddress

    ok = isinstance(value, list | tuple | set | frozenset) and all(
        isinstance(item, str) for item in value
    )
    if ok:
        try:
            for item in value:
                ipaddress.ip_network(item, strict=False)
        except ValueError:
            ok = False
    if ok:
        return []
    return [
        Error(
            "BROKER_WS['TRUSTED_PROXIES'] must be a list of IP addresses or networks.",
            hint='For example ["127.0.0.1", "10.0.0.0/8"]: the proxies whose X-Forwarded-For '
            "is believed.",
            id="broker_ws.E011",
        )
    ]


def check_server_versions(
    app_configs: Iterable[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W002: daphne, autobahn, Twisted, uvicorn or websockets outside the tested range."""
    from broker_ws.servers.versions import untested

    return [
        Warning(
            f"{name} {installed} is installed; broker_ws's shortcuts into it were tested "
            f"with {name}{tested}.",
            hint="Each shortcut turns itself off if it fails (a WARNING and the "
            "broker_ws_fast_path_disabled metric); run the project's tests against this "
            "version, or pin a tested one.",
            id="broker_ws.W002",
        )
        for name, installed, tested in untested()
    ]
