"""Browser Origin check for WebSocket handshakes.

Trading apps and bots send no ``Origin`` header and are always accepted
(Channels' ``AllowedHostsOriginValidator`` refuses them, so it cannot be
used). When a browser sends one, its host must match
``BROKER_WS['ALLOWED_ORIGINS']`` (patterns as in ``ALLOWED_HOSTS``:
``example.com``, ``.example.com`` for subdomains, ``*``), or ``ALLOWED_HOSTS``
when that setting is None.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils.http import is_same_domain

from broker_ws.conf import conf


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the handshake's Origin (if any) is acceptable."""
    raw = _header(scope, b"origin")
    if raw is None:
        return True
    try:
        host = urlsplit(raw.decode("latin-1")).hostname
    except ValueError:
        return False
    if not host:
        return False
    patterns = conf.ALLOWED_ORIGINS
    if patterns is None:
        patterns = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not patterns:
            patterns = [".localhost", "127.0.0.1", "[::1]"]
    return any(pattern == "*" or is_same_domain(host, pattern) for pattern in patterns)
