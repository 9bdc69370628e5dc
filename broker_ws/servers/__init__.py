"""What broker_ws knows of the ASGI servers it runs under: one module per server.

A session asks :func:`transport_for` once, when it starts, for the
:class:`~broker_ws.servers.base.Transport` of its server: daphne's
(:mod:`broker_ws.servers.daphne`), uvicorn's (:mod:`broker_ws.servers.uvicorn`),
or the plain ASGI one for any other server and for test communicators. The
tested versions of each server are checked at start-up (``broker_ws.W002``,
:mod:`broker_ws.servers.versions`).
"""

from __future__ import annotations

import logging
from typing import Any

from broker_ws.servers import daphne, uvicorn
from broker_ws.servers.base import ConnectionGone, FastPath, Transport

__all__ = ["ConnectionGone", "FastPath", "Transport", "transport_for"]

logger = logging.getLogger(__name__)

DETECTION = FastPath("any", "server detection")


def transport_for(send: Any) -> Transport:
    """The transport of the session whose ASGI ``send`` this is.

    An error while recognizing the server turns detection off for the process
    (one WARNING): every later session then uses the plain ASGI path.
    """
    if DETECTION.enabled:
        try:
            found = daphne.transport_for(send) or uvicorn.transport_for(send)
        except Exception as exc:
            DETECTION.fail(exc)
        else:
            if found is not None:
                return found
    return Transport()
