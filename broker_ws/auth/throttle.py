"""Making abuse cost the abuser: limits on unauthenticated sockets and failed tokens.

A client that has not authorized yet costs the server a handshake, a session
and a token check, and without limits a flood of bad tokens (thousands of
sockets, each failing and reconnecting at once) held a server process at a
full core. Per client address, and for the whole process:

* at most ``MAX_UNAUTHENTICATED_PER_ADDRESS`` sockets of one address, and
  ``MAX_UNAUTHENTICATED`` in all, may be open without having authorized; one
  more is held for the address's current penalty (at least a second), then
  closed with 4006 (``rate_limited``), so that its client cannot loop on
  refusals at the server's expense;
* every failed authorization raises the address's failure score, which
  halves every :data:`HALF_LIFE` seconds. Past ``AUTH_FAILURE_BURST`` failures,
  the ``auth_failed`` error and the 4001 close come only after a delay that
  doubles with each further failure, up to ``AUTH_FAILURE_MAX_DELAY``. A held
  socket costs memory, not CPU: its messages are not read meanwhile.

The address is the TCP peer of the connection, or, when that peer is one of
``TRUSTED_PROXIES``, the rightmost address of its ``X-Forwarded-For`` header
that is not a trusted proxy itself (every earlier address is the client's
own claim). Without that setting the header is ignored: any client can send it.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import random
import time
from collections.abc import Callable
from typing import Any

from broker_ws.conf import conf

#: Seconds in which a failure score halves.
HALF_LIFE = 60.0
#: The first delay past the burst, in seconds; it doubles with every failure.
FIRST_DELAY = 0.1
#: The least time a socket over the unauthenticated cap is held before its 4006.
MIN_HOLD = 1.0
#: Past this many scored addresses, faded ones are swept on the next failure.
SWEEP_AT = 10_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(values: tuple[str, ...]) -> list[Network]:
    return [ipaddress.ip_network(value, strict=False) for value in values]


def is_trusted_proxy(address: str) -> bool:
    """Whether ``address`` is in ``TRUSTED_PROXIES``."""
    trusted = conf.TRUSTED_PROXIES
    return bool(trusted) and _is_in(address, _networks(tuple(trusted)))


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def client_address(scope: dict[str, Any]) -> str:
    """The address a connection is throttled by (see the module docstring)."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not is_trusted_proxy(peer):
        return peer
    networks = _networks(tuple(conf.TRUSTED_PROXIES))
    forwarded = _header(scope, b"x-forwarded-for")
    if forwarded is None:
        return peer
    hops = [hop.strip() for hop in forwarded.decode("latin-1").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_in(hop, networks):
            return hop if _is_address(hop) else peer
    return peer


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_in(value: str, networks: list[Network]) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in network for network in networks)


class Throttle:
    """The unauthenticated sockets and failure scores of one server process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: dict[str, int] = {}
        self._open_total = 0
        #: address -> (score, when it was last raised)
        self._scores: dict[str, tuple[float, float]] = {}
        self._sweep_at = SWEEP_AT

    # --- unauthenticated sockets -----------------------------------------------
    def admit(self, address: str) -> bool:
        """Count a new unauthenticated socket of ``address``, or refuse it (False)."""
        count = self._open.get(address, 0)
        if count >= conf.MAX_UNAUTHENTICATED_PER_ADDRESS:
            return False
        if self._open_total >= conf.MAX_UNAUTHENTICATED:
            return False
        self._open[address] = count + 1
        self._open_total += 1
        return True

    def release(self, address: str) -> None:
        """A socket :meth:`admit` counted authorized or closed."""
        count = self._open.get(address, 0)
        if count <= 1:
            self._open.pop(address, None)
        else:
            self._open[address] = count - 1
        if count:
            self._open_total -= 1

    def unauthenticated(self, address: str | None = None) -> int:
        """Open unauthenticated sockets, of ``address`` or in all."""
        return self._open_total if address is None else self._open.get(address, 0)

    # --- failed authorizations ---------------------------------------------------
    def score(self, address: str) -> float:
        """The address's failures, fading with :data:`HALF_LIFE`."""
        entry = self._scores.get(address)
        if entry is None:
            return 0.0
        value, stamp = entry
        return value * 0.5 ** ((self._clock() - stamp) / HALF_LIFE)

    def fail(self, address: str) -> float:
        """Record a failed authorization; the seconds to hold its answer."""
        if len(self._scores) >= self._sweep_at:
            self._sweep()
        value = self.score(address) + 1.0
        self._scores[address] = (value, self._clock())
        return self._delay(value)

    def hold(self, address: str) -> float:
        """How long to hold a socket refused by :meth:`admit` before closing it: the
        address's penalty, drawn from its upper half so that sockets refused together
        are not released (and do not come back) together."""
        penalty = max(MIN_HOLD, self._delay(self.score(address)))
        return random.uniform(max(MIN_HOLD, penalty / 2), penalty)

    @staticmethod
    def _delay(score: float) -> float:
        excess = score - conf.AUTH_FAILURE_BURST
        if excess <= 0:
            return 0.0
        ceiling = conf.AUTH_FAILURE_MAX_DELAY
        if excess > math.log2(max(ceiling, FIRST_DELAY) / FIRST_DELAY) + 1:
            return ceiling
        return min(ceiling, FIRST_DELAY * 2 ** (excess - 1))

    def _sweep(self) -> None:
        """Forget addresses whose score has faded below one failure."""
        for address in [a for a in self._scores if self.score(a) < 1.0]:
            del self._scores[address]
        # Many addresses still scored (a flood from many): the next sweep waits until
        # there are twice as many, or every new one would walk them all again.
        self._sweep_at = max(SWEEP_AT, 2 * len(self._scores))


_throttle: Throttle | None = None


def get_throttle() -> Throttle:
    """The throttle of this process (one event loop serves every session)."""
    global _throttle
    if _throttle is None:
        _throttle = Throttle()
    return _throttle
