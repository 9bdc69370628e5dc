"""ASGI entry points for hosts.

``websocket_application()`` is what a host puts under ``"websocket"`` in its
``ProtocolTypeRouter``. The stream lives at the root path; the consumer
refuses other paths and disallowed browser Origins at the handshake.
"""

from __future__ import annotations

from typing import Any

from broker_ws.session.consumer import StreamConsumer


def websocket_application() -> Any:
    """The ASGI application serving protocol v1 at ``/``."""
    return StreamConsumer.as_asgi()
