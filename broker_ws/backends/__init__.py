"""Selects the backend from ``BROKER_WS['REDIS_URL']``.

Backends are cached per configuration rather than per process, so that
``override_settings`` in tests gets a backend of its own while production
code pays one dictionary lookup per call.
"""

from __future__ import annotations

import threading

from broker_ws.backends.base import Backend, Subscriber
from broker_ws.conf import conf

__all__ = ["Backend", "Subscriber", "get_backend"]

_backends: dict[tuple[object, ...], Backend] = {}
_lock = threading.Lock()


def get_backend() -> Backend:
    """The backend for the current settings."""
    url = conf.REDIS_URL
    key = (url, conf.KEY_PREFIX, conf.REDIS_MAX_CONNECTIONS)
    backend = _backends.get(key)
    if backend is not None:
        return backend
    with _lock:
        backend = _backends.get(key)
        if backend is None:
            if url:
                from broker_ws.backends.redis import RedisBackend

                backend = RedisBackend(url, conf.KEY_PREFIX, conf.REDIS_MAX_CONNECTIONS)
            else:
                from broker_ws.backends.memory import MemoryBackend

                backend = MemoryBackend()
            _backends[key] = backend
    return backend
