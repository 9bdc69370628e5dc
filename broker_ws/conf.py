"""The ``BROKER_WS`` settings namespace.

Every property reads ``settings.BROKER_WS`` on each access, over a default, so
``override_settings`` works in tests and nothing is captured at import time
(simplejwt's import-time capture is the example to avoid). Validation lives in
``checks.py`` as system checks, never here: a bad value must not make
``import broker_ws`` raise.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    # Redis shared by every server and publisher process: the fan-out bus and
    # the last quotes. None keeps both inside one process (the embedded demo);
    # account frames, their seq and history live in the database either way.
    "REDIS_URL": None,
    # Prefix of every Redis key and bus channel, so several deployments (or
    # test runs) can share one Redis.
    "KEY_PREFIX": "bws",
    # Dotted path to ``callable(user) -> Iterable[str]``: the logins whose
    # account frames a token of that user may receive.
    "LOGIN_RESOLVER": "broker_ws.auth.username_login",
    # A callable, or its dotted path, ``(raw_token: str) -> Identity`` (sync or
    # async): what a token is and whom it speaks for. The default accepts
    # simplejwt access tokens and asks LOGIN_RESOLVER (broker_ws/auth/authenticate.py).
    "TOKEN_AUTHENTICATOR": "broker_ws.auth.simplejwt_authenticator",
    # The host's own client commands: event name -> handler (a callable or its
    # dotted path) ``(identity, data) -> reply data`` (broker_ws/session/commands.py).
    "COMMANDS": {},
    # Commands of one session being handled at once; one more is answered
    # ``too_many_pending`` (the session stays open).
    "MAX_PENDING_COMMANDS": 8,
    # None: any symbol allowed by SYMBOL_MAX_LENGTH. A list/tuple/set: only
    # those. A dotted path to ``callable(symbol) -> bool``: whatever it accepts.
    "SYMBOLS": None,
    "SYMBOL_MAX_LENGTH": 256,
    # None: no per-user check. A callable, or its dotted path, ``(identity, symbols:
    # list[str]) -> iterable of the allowed ones`` (sync: run in the database
    # thread; or async), asked about the symbols a subscribe adds (after SYMBOLS).
    "SYMBOL_ENTITLEMENTS": None,
    # Instrument statuses of the host's own besides open, closed, halted and
    # close_only (broker_ws/publish/statuses.py): short lower-case names.
    "INSTRUMENT_STATUSES": [],
    # Seconds an unauthenticated socket may stay open.
    "AUTH_TIMEOUT": 10.0,
    # Largest client text frame handled, in UTF-8 bytes; larger ones get an
    # error reply. Tokens are well under 2 KiB.
    "MAX_MESSAGE_BYTES": 16384,
    "MAX_SUBSCRIPTIONS": 500,
    # Client messages per second a session may send on average (bursts of
    # twice that); one more closes it with 4006.
    "MAX_MESSAGES_PER_SECOND": 20,
    # Sessions of one login on one server process; one more is refused with
    # 4007.
    "MAX_SESSIONS_PER_LOGIN": 50,
    # Account frames kept per login in the database outbox, for gap filling
    # and resume.
    "HISTORY_SIZE": 1000,
    # Seconds between two reads of the outbox by each server process, for
    # account frames the bus did not bring (saved by another process without
    # Redis, or published while Redis was down).
    "OUTBOX_POLL_INTERVAL": 0.25,
    # Bytes the server may hold unsent for one socket before the session is
    # slow: its quotes are then conflated to the latest per symbol.
    "SLOW_CONSUMER_BUFFER": 262144,
    # Frames other than quotes (account frames, replies) a slow session may
    # hold; one more closes it with 4005 (too slow: resume or resync).
    "SLOW_CONSUMER_MAX_PENDING": 5000,
    # Browser Origins accepted. None: the hosts of ALLOWED_HOSTS. Clients
    # that send no Origin (apps, bots) are always accepted.
    "ALLOWED_ORIGINS": None,
    # The price-alert engine (docs/settings.md): None, or a dict naming the
    # alert model and, where they differ from the defaults, its fields.
    "PRICE_ALERTS": None,
    # Model bindings: list of dicts with model, marker, login, fields.
    "BINDINGS": [],
    # redis-py connection pool size of each process (publisher and server).
    "REDIS_MAX_CONNECTIONS": 200,
    # Seconds over which a server process that gets SIGTERM tells its sessions
    # to reconnect and closes them (4009), spread out; 0 leaves SIGTERM to the
    # server (daphne drops connections, uvicorn closes them all with 1012).
    "DRAIN_WINDOW": 5.0,
    # Addresses or networks ("10.0.0.0/8") of the proxies in front of the servers:
    # only their X-Forwarded-For is believed for the client address that the
    # limits below count by. Empty: the TCP peer is the client.
    "TRUSTED_PROXIES": [],
    # Sockets open without having authorized, per client address and per server
    # process; one more is held, then closed with 4006.
    "MAX_UNAUTHENTICATED_PER_ADDRESS": 1000,
    "MAX_UNAUTHENTICATED": 5000,
    # New connections of one client address served at once, then per second (less
    # while the address keeps failing authorizations); the others wait, unread, and
    # past MAX_UNAUTHENTICATED_PER_ADDRESS waiting get 429 (broker_ws/auth/admission.py;
    # daphne only). 0 per second: off.
    "CONNECT_BURST_PER_ADDRESS": 100,
    "CONNECTS_PER_SECOND_PER_ADDRESS": 1000.0,
    # Failed authorizations of one address (fading by half every 60 s) answered at
    # once; past them, the 4001 comes after a delay doubling up to the maximum (s).
    "AUTH_FAILURE_BURST": 10,
    "AUTH_FAILURE_MAX_DELAY": 10.0,
    # Sessions authorized between two freezes of the garbage collector's view
    # (broker_ws/session/collector.py): after that many, a full collection over what is
    # new, then gc.freeze(); 0 leaves the collector alone.
    "GC_FREEZE_EVERY": 200,
    # Seconds between two reclaims of what died frozen in a reference cycle (one
    # full collection over everything); 0: never.
    "GC_RECLAIM_INTERVAL": 3600.0,
    # Seconds between two refreshes of a server process's presence record (its
    # sessions per login, broker_ws/session/presence.py); the record expires after
    # three of them, so a process that dies without a goodbye drops out.
    "PRESENCE_INTERVAL": 5.0,
    # Seconds without any frame after which an authorized session is sent a heartbeat
    # ["h", ts_ms, {login: seq}] (broker_ws/session/heartbeat.py); 0: none.
    "HEARTBEAT_INTERVAL": 15.0,
    # Logins with the most sessions exported one by one in /metrics
    # (broker_ws_presence_login_sessions{login}); 0: totals only.
    "PRESENCE_METRICS_LOGINS": 0,
    # Live account state (broker_ws/publish/state.py): marker -> the names of the
    # fields publish_state() sends, e.g. {"e": ["equity", "margin", "free_margin",
    # "margin_level", "floating_pl"]}. State frames carry no seq and are never stored.
    "STATE_MARKERS": {},
    # State frames per second each session gets at most of one login and marker
    # (the latest one, trailing); 0: every one (still conflated for a slow session).
    "STATE_MAX_RATE": 4.0,
}


class Settings:
    """Typed, lazy view of ``settings.BROKER_WS``."""

    def _get(self, name: str) -> Any:
        user = getattr(django_settings, "BROKER_WS", None) or {}
        if not isinstance(user, dict):
            return DEFAULTS[name]
        return user.get(name, DEFAULTS[name])

    @property
    def REDIS_URL(self) -> str | None:
        return self._get("REDIS_URL")

    @property
    def KEY_PREFIX(self) -> str:
        return self._get("KEY_PREFIX")

    @property
    def LOGIN_RESOLVER(self) -> Any:
        return self._get("LOGIN_RESOLVER")

    @property
    def TOKEN_AUTHENTICATOR(self) -> Any:
        return self._get("TOKEN_AUTHENTICATOR")

    @property
    def COMMANDS(self) -> Any:
        return self._get("COMMANDS")

    @property
    def MAX_PENDING_COMMANDS(self) -> int:
        return self._get("MAX_PENDING_COMMANDS")

    @property
    def SYMBOLS(self) -> Any:
        return self._get("SYMBOLS")

    @property
    def SYMBOL_MAX_LENGTH(self) -> int:
        return self._get("SYMBOL_MAX_LENGTH")

    @property
    def SYMBOL_ENTITLEMENTS(self) -> Any:
        return self._get("SYMBOL_ENTITLEMENTS")

    @property
    def INSTRUMENT_STATUSES(self) -> list[str]:
        return self._get("INSTRUMENT_STATUSES")

    @property
    def AUTH_TIMEOUT(self) -> float:
        return float(self._get("AUTH_TIMEOUT"))

    @property
    def MAX_MESSAGE_BYTES(self) -> int:
        return self._get("MAX_MESSAGE_BYTES")

    @property
    def MAX_SUBSCRIPTIONS(self) -> int:
        return self._get("MAX_SUBSCRIPTIONS")

    @property
    def MAX_MESSAGES_PER_SECOND(self) -> int:
        return self._get("MAX_MESSAGES_PER_SECOND")

    @property
    def MAX_SESSIONS_PER_LOGIN(self) -> int:
        return self._get("MAX_SESSIONS_PER_LOGIN")

    @property
    def HISTORY_SIZE(self) -> int:
        return self._get("HISTORY_SIZE")

    @property
    def OUTBOX_POLL_INTERVAL(self) -> float:
        return float(self._get("OUTBOX_POLL_INTERVAL"))

    @property
    def SLOW_CONSUMER_BUFFER(self) -> int:
        return self._get("SLOW_CONSUMER_BUFFER")

    @property
    def SLOW_CONSUMER_MAX_PENDING(self) -> int:
        return self._get("SLOW_CONSUMER_MAX_PENDING")

    @property
    def ALLOWED_ORIGINS(self) -> list[str] | None:
        return self._get("ALLOWED_ORIGINS")

    @property
    def PRICE_ALERTS(self) -> dict[str, Any] | None:
        return self._get("PRICE_ALERTS")

    @property
    def BINDINGS(self) -> list[dict[str, Any]]:
        return self._get("BINDINGS")

    @property
    def REDIS_MAX_CONNECTIONS(self) -> int:
        return self._get("REDIS_MAX_CONNECTIONS")

    @property
    def DRAIN_WINDOW(self) -> float:
        return float(self._get("DRAIN_WINDOW"))

    @property
    def TRUSTED_PROXIES(self) -> list[str]:
        return list(self._get("TRUSTED_PROXIES"))

    @property
    def MAX_UNAUTHENTICATED_PER_ADDRESS(self) -> int:
        return self._get("MAX_UNAUTHENTICATED_PER_ADDRESS")

    @property
    def MAX_UNAUTHENTICATED(self) -> int:
        return self._get("MAX_UNAUTHENTICATED")

    @property
    def CONNECT_BURST_PER_ADDRESS(self) -> int:
        return int(self._get("CONNECT_BURST_PER_ADDRESS"))

    @property
    def CONNECTS_PER_SECOND_PER_ADDRESS(self) -> float:
        return float(self._get("CONNECTS_PER_SECOND_PER_ADDRESS"))

    @property
    def AUTH_FAILURE_BURST(self) -> int:
        return self._get("AUTH_FAILURE_BURST")

    @property
    def AUTH_FAILURE_MAX_DELAY(self) -> float:
        return float(self._get("AUTH_FAILURE_MAX_DELAY"))

    @property
    def GC_FREEZE_EVERY(self) -> int:
        return int(self._get("GC_FREEZE_EVERY"))

    @property
    def GC_RECLAIM_INTERVAL(self) -> float:
        return float(self._get("GC_RECLAIM_INTERVAL"))

    @property
    def PRESENCE_INTERVAL(self) -> float:
        return float(self._get("PRESENCE_INTERVAL"))

    @property
    def HEARTBEAT_INTERVAL(self) -> float:
        return float(self._get("HEARTBEAT_INTERVAL"))

    @property
    def PRESENCE_METRICS_LOGINS(self) -> int:
        return int(self._get("PRESENCE_METRICS_LOGINS"))

    @property
    def STATE_MARKERS(self) -> dict[str, list[str]]:
        return self._get("STATE_MARKERS")

    @property
    def STATE_MAX_RATE(self) -> float:
        return float(self._get("STATE_MAX_RATE"))


conf = Settings()
