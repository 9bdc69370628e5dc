"""Per-session limit on client messages: a token bucket.

A client may send ``rate`` messages per second on average and bursts of up
to twice that (a reconnecting client sends authorization, subscriptions and
pings at once). One message more closes the session with 4006.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, holding at most ``2 * rate``."""

    __slots__ = ("_clock", "_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.capacity = 2 * self.rate
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()

    def allow(self) -> bool:
        """Take a token if one is there."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
