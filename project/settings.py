"""Settings for the broker_ws demo project.

Defaults give a zero-setup dev run (SQLite, in-memory channel layer); set DATABASE_URL and
REDIS_URL to run several daphne processes against shared Postgres and Redis.
"""

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _postgres_from_url(url: str) -> dict[str, Any]:
    """Parse a postgres:// URL by hand so the demo needs no dj-database-url."""
    parts = urlsplit(url)
    config: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }
    # Query parameters (e.g. ?sslmode=require) are passed through to the driver.
    options = dict(parse_qsl(parts.query))
    if options:
        config["OPTIONS"] = options
    return config


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-broker-ws-demo-key-change-me-before-deploying"
)
DEBUG = _env_bool("DJANGO_DEBUG", True)
ALLOWED_HOSTS = (
    ["*"]
    if DEBUG
    else [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()]
)

INSTALLED_APPS = [
    # daphne first so that `runserver` serves ASGI (HTTP and WebSocket).
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "channels",
    "broker_ws",
    "project.broker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "project.asgi.application"

_database_url = os.environ.get("DATABASE_URL", "")
if _database_url.startswith(("postgres://", "postgresql://")):
    _postgres = _postgres_from_url(_database_url)
    DATABASES = {
        "default": {
            **_postgres,
            # No persistent connections under ASGI: each HTTP request runs in a
            # thread of its own, and a kept connection stayed open after its thread
            # was gone (one per request: 200 PostgreSQL connections, "too many
            # clients", in a trial with 100 clients). The pool hands connections
            # back instead, so database_sync_to_async closing them after each call
            # costs no reconnect.
            "CONN_MAX_AGE": 0,
            "OPTIONS": {
                **_postgres.get("OPTIONS", {}),
                "pool": {
                    "min_size": 2,
                    # Each HTTP request in flight holds one, a login through its
                    # password hashing. More does not help on a small machine: in a
                    # 100-client login storm on 2 cores, 32 let more hashing run at
                    # once and all clients were subscribed after 82 s, against 39 s
                    # with 16 (the rest wait, then get 503 and retry).
                    "max_size": 16,
                    # Seconds to wait for a connection: while PostgreSQL is down a
                    # token check is answered "unavailable" (4008) after this.
                    "timeout": 2,
                },
            },
            # With the pool, Django has psycopg_pool check each connection as it is
            # handed out.
            "CONN_HEALTH_CHECKS": True,
        }
    }
else:
    # DATABASE_URL=sqlite:////absolute/path.sqlite3 picks another SQLite file.
    _sqlite_path = unquote(urlsplit(_database_url).path) if _database_url else ""
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _sqlite_path or BASE_DIR / "demo.sqlite3",
            # No persistent connection under ASGI: each HTTP request runs in a
            # thread of its own, and a kept connection stayed open after its thread
            # was gone (90 open files after 100 requests). Reopening costs little
            # now that authorizations share database trips (broker_ws/session/batching.py).
            "CONN_MAX_AGE": 0,
            "OPTIONS": {
                # Wait for the lock instead of failing with "database is locked" when a
                # second process (a shell, demo_data) saves while the server does.
                "timeout": 20,
                # Take the write lock when a transaction starts: a save's transaction
                # also numbers its account frame, and SQLite cannot upgrade a read
                # lock to a write lock without failing at once under contention.
                "transaction_mode": "IMMEDIATE",
                # Readers (the outbox poller) do not block writers.
                "init_command": "PRAGMA journal_mode=WAL;",
            },
        }
    }

REDIS_URL = os.environ.get("REDIS_URL")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # redis-py 8 defaults socket_timeout to 5 s, which kills the layer's
                        # blocking reads; None lets them wait as long as they need.
                        "socket_timeout": None,
                        "socket_connect_timeout": 5,
                        # A connect burst exhausts a small pool; leave plenty of headroom.
                        "max_connections": 1000,
                    }
                ],
                "capacity": 1500,
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=15),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": SECRET_KEY,
}

# broker_ws reads these keys itself; the project only declares them.
BROKER_WS = {
    "REDIS_URL": REDIS_URL,
    # The demo's alerts use the engine's default field names (symbol, price,
    # condition above/below, status active -> triggered, triggered_at).
    "PRICE_ALERTS": {"model": "broker.PriceAlert"},
    "LOGIN_RESOLVER": "project.broker.logins.logins_for_user",
    # The demo's own client commands (docs/protocol.md, Commands).
    "COMMANDS": {
        "place_order": "project.broker.commands.place_order",
        "close_trade": "project.broker.commands.close_trade",
    },
    # Live account state, never saved: the demo's feed publishes it for accounts
    # with open trades on every quote of their symbols (project/broker/equity.py).
    "STATE_MARKERS": {"e": ["equity", "margin", "free_margin", "margin_level", "floating_pl"]},
    "BINDINGS": [
        {
            "model": "broker.Balance",
            "marker": "b",
            "login": "account.login",
            "fields": ["currency", "balance", "equity", "margin", "free_margin", "updated_at"],
        },
        {
            "model": "broker.Trade",
            "marker": "o",
            "login": "account.login",
            "fields": [
                "ticket",
                "symbol",
                "side",
                "volume",
                "open_price",
                "close_price",
                "profit",
                "status",
                "updated_at",
            ],
            # A REST snapshot lists open trades only.
            "current": {"status": "open"},
        },
        {
            "model": "broker.PriceAlert",
            "marker": "a",
            "login": "account.login",
            "fields": ["id", "symbol", "condition", "price", "status", "updated_at"],
            "current": {"status": "active"},
        },
    ],
}

# Experiments, benchmarks and tests tune broker_ws without editing this file:
# BROKER_WS_JSON='{"SLOW_CONSUMER_BUFFER": 65536}'.
BROKER_WS.update(json.loads(os.environ.get("BROKER_WS_JSON", "{}")))

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "simple": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "simple"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "broker_ws": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
