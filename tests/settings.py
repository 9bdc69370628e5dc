"""Test settings: the demo project, quieter and faster.

The demo's bindings and login resolver are what the tests exercise. Tests
of the Redis backend switch BROKER_WS with ``override_settings`` (see
``conftest.backend``), each under a key prefix of its own.
"""

from project.settings import *  # noqa: F403
from project.settings import BROKER_WS as DEMO_BROKER_WS

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "TEST": {"NAME": "file:broker_ws_tests?mode=memory&cache=shared"},
    }
}
# A second database, for the ``using=`` of push and notify (tests that ask for it).
DATABASES["other"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": ":memory:",
    "TEST": {"NAME": "file:broker_ws_tests_other?mode=memory&cache=shared"},
}
# A deal between two accounts: a row that belongs to two logins.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.exchange"]  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# Tests send messages far faster than any client may; the rate-limit tests
# lower the limit themselves. The alert engine is on only in its own tests.
BROKER_WS = {
    **DEMO_BROKER_WS,
    "REDIS_URL": None,
    "MAX_MESSAGES_PER_SECOND": 1_000_000,
    "PRICE_ALERTS": None,
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "WARNING"},
}
