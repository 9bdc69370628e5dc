"""Spreading daphne's keepalive pings over their interval.

daphne pings a session ``--ping-interval`` seconds (20 by default) after it
opened, last heard from the client or last pinged it, and checks every open
session for that in one callback every 2 s (``Server.timeout_checker``).
Sessions that connected together — every client of a server that just
restarted, or of a proxy that just reconnected them — open, authorize and
subscribe within the same second, and are therefore pinged together, in the
same callback, every interval for as long as they stay quiet, and streaming
clients do stay quiet. Measured with 2000 such sessions (bench/README.md,
"daphne's ping batch"), that callback sent all 2000 pings, holding the event
loop, and every frame due meanwhile, every 20 s.

:class:`PingPhase` gives each session a random phase within the interval:
after daphne restarts a session's ping clock (at the open and at every
client message), it moves the clock back by the session's own offset, so
the next ping comes that much sooner than daphne would send it, never later.
Sessions that spoke together are then pinged in about ``interval / 2 s``
passes instead of one. The interval and the pong timeout stay daphne's.
Under any other server (uvicorn pings each session from a timer of its own)
there is nothing to spread.
"""

from __future__ import annotations

import random
import time
from typing import Any

from broker_ws.servers.direct_write import daphne_protocol


class PingPhase:
    """The ping clock offset of one daphne session."""

    __slots__ = ("_offset", "_protocol", "_written")

    def __init__(self, protocol: Any, offset: float) -> None:
        self._protocol = protocol
        self._offset = offset
        self._written: float | None = None

    def restore(self) -> None:
        """Move daphne's ping clock back by the offset if daphne restarted it since
        the last call (once per restart: several messages may share one)."""
        last_ping = getattr(self._protocol, "last_ping", None)
        if last_ping == self._written or not isinstance(last_ping, int | float):
            return
        self._written = min(last_ping, time.time()) - self._offset
        self._protocol.last_ping = self._written


def ping_phase(send: Any, rand: random.Random | None = None) -> PingPhase | None:
    """A random ping phase for this session, applied at once; None unless the
    server is daphne (with pings on)."""
    protocol = daphne_protocol(send)
    if protocol is None:
        return None
    interval = getattr(getattr(protocol, "server", None), "ping_interval", None)
    if not isinstance(interval, int | float) or interval <= 0:
        return None
    phase = PingPhase(protocol, (rand or random).uniform(0, interval))
    phase.restore()
    return phase
