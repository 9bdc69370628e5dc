"""Admission of new TCP connections, before the server spends an HTTP upgrade on them.

:mod:`broker_ws.auth.throttle` limits what a client address may do once its socket
has become a session; by then the server has already paid for the TCP accept,
the HTTP parse, the WebSocket handshake and a session (about a millisecond of
the event loop under daphne). A flood that reconnects as fast as it is answered
was still paid for at that price: 2000 loops of bad tokens from one address
kept the server at 41 % of a core and a good client's authorization at 1.1 s
at p99 (``bench/flood.py``). This module decides, at the accept, for each new
connection of an address that is not a trusted proxy:

* **serve** it now, while the address has connections left in its bucket:
  ``CONNECT_BURST_PER_ADDRESS`` at once, refilled at
  ``CONNECTS_PER_SECOND_PER_ADDRESS``. The defaults (100, then 1000 a second) are
  above what one process can hand over to sessions anyway (about 600 a second
  on one core), so a reconnect storm from one address (a NAT, a load test) is
  not slowed down; what they bound is the work one turn of the event loop can
  be handed at once;
* the refill rate of an address that keeps failing authorizations shrinks in
  proportion: past ``AUTH_FAILURE_BURST`` failures (the :class:`Throttle`'s
  fading score), it is the rate times ``AUTH_FAILURE_BURST / score``. A flood
  of bad tokens thus settles where its failures balance its score (about 11
  connections a second with the defaults), while an office with one broken
  client among many keeps most of its rate;
* **queue** it, its bytes unread, while the bucket is empty or the address
  already has ``MAX_UNAUTHENTICATED_PER_ADDRESS`` unauthenticated sessions: it
  is served in turn. At most that many connections of one address wait (and
  ``MAX_UNAUTHENTICATED`` of all addresses);
* **refuse** it past that: held unread for the address's penalty
  (:meth:`Throttle.hold`, at least a second, longer while the address keeps
  failing authorizations), then answered ``429 Too Many Requests`` with
  ``Retry-After`` and closed. A held connection costs a socket and a timer,
  not a handshake, so a client that loops on refusals costs the server little.

The decisions are here, apart from any server: a server's adapter (daphne's is
in :mod:`broker_ws.servers.daphne`) asks :meth:`Admission.admit_now` and, when
the answer is no, wraps the connection in an object that can
:meth:`~Arrival.serve` and :meth:`~Arrival.refuse` and hands it to
:meth:`Admission.wait`. Connections through a trusted proxy are the proxy's
to limit (its own connection limits; see docs/deployment.md) and are always
served: their addresses are known only after the HTTP parse.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from broker_ws.auth.throttle import Throttle, get_throttle, is_trusted_proxy
from broker_ws.conf import conf
from broker_ws.metrics import CONNECTIONS_QUEUED as QUEUED
from broker_ws.metrics import CONNECTIONS_REFUSED as REFUSED

#: Past this many addresses with a bucket, refilled idle ones are swept.
SWEEP_AT = 10_000
#: Seconds between two looks at a queue whose address has no room for sessions.
FULL_RECHECK = 0.1


class Arrival(Protocol):
    """A new connection, as a server's adapter hands it over."""

    def serve(self) -> None:
        """Hand the connection to the server now (its first bytes unread so far)."""

    def refuse(self, retry_after: int) -> None:
        """Answer 429 with ``Retry-After: retry_after`` and close."""


class _Bucket:
    __slots__ = ("tokens", "stamp", "queue", "timer")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.queue: deque[Arrival] = deque()
        self.timer: asyncio.TimerHandle | None = None


class Admission:
    """The connection buckets, queues and refusals of one server process."""

    def __init__(
        self,
        throttle: Throttle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: None: the process's throttle, looked up at each use, so that the counts
        #: this reads are always the ones the sessions write.
        self._own_throttle = throttle
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._queued_total = 0
        self._held_total = 0
        self._sweep_at = SWEEP_AT

    @property
    def _throttle(self) -> Throttle:
        return self._own_throttle or get_throttle()

    # --- what a server's adapter asks ---------------------------------------------
    def applies_to(self, address: str) -> bool:
        """Whether connections of ``address`` are decided here (not a trusted proxy,
        and the limit on)."""
        return conf.CONNECTS_PER_SECOND_PER_ADDRESS > 0 and not is_trusted_proxy(address)

    def admit_now(self, address: str) -> bool:
        """Take one of the address's connections in hand, if it has one and none of
        its connections is waiting: the connection is then served at once."""
        bucket = self._bucket(address)
        if bucket.queue or bucket.tokens < 1.0 or self._full(address):
            return False
        bucket.tokens -= 1.0
        return True

    def wait(self, address: str, arrival: Arrival) -> str:
        """Queue a connection :meth:`admit_now` did not serve, or refuse it when
        the address (or the process) has no room left; returns "queued" or
        "refused". Either way ``arrival`` is called back later, never before
        this returns."""
        bucket = self._buckets.get(address) or self._bucket(address)  # refilled just now
        if self._room(address):
            bucket.queue.append(arrival)
            self._queued_total += 1
            QUEUED.inc()
            self._schedule(address, bucket)
            return "queued"
        self._refuse_later(address, arrival)
        return "refused"

    # --- counts, for the throttle's caps and for tests ---------------------------------
    def queued(self, address: str | None = None) -> int:
        """Connections waiting for their turn, of ``address`` or in all."""
        if address is None:
            return self._queued_total
        bucket = self._buckets.get(address)
        return len(bucket.queue) if bucket else 0

    def held(self) -> int:
        """Refused connections not answered yet."""
        return self._held_total

    # --- internals -------------------------------------------------------------------------
    def _bucket(self, address: str) -> _Bucket:
        now = self._clock()
        burst = float(conf.CONNECT_BURST_PER_ADDRESS)
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now, burst)
            bucket = self._buckets[address] = _Bucket(burst, now)
            return bucket
        rate = self.rate(address)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        return bucket

    def rate(self, address: str) -> float:
        """Connections per second the address's bucket refills at."""
        rate = conf.CONNECTS_PER_SECOND_PER_ADDRESS
        score = self._throttle.score(address)
        burst = conf.AUTH_FAILURE_BURST
        return rate * burst / score if score > burst else rate

    def _full(self, address: str) -> bool:
        """Whether the address has as many unauthenticated sessions as it may: one
        more served now would be refused at the session (4006) after its handshake."""
        throttle = self._throttle
        return (
            throttle.unauthenticated(address) >= conf.MAX_UNAUTHENTICATED_PER_ADDRESS
            or throttle.unauthenticated() >= conf.MAX_UNAUTHENTICATED
        )

    def _room(self, address: str) -> bool:
        """Whether one more connection of ``address`` may wait in its queue."""
        if self.queued(address) >= conf.MAX_UNAUTHENTICATED_PER_ADDRESS:
            return False
        return self._queued_total < conf.MAX_UNAUTHENTICATED

    def _schedule(self, address: str, bucket: _Bucket, at_least: float = 0.0) -> None:
        if bucket.timer is not None:
            return
        rate = self.rate(address)
        wait = max(at_least, (1.0 - bucket.tokens) / rate) if rate > 0 else at_least
        loop = asyncio.get_running_loop()
        bucket.timer = loop.call_later(wait, self._release, address)

    def _release(self, address: str) -> None:
        bucket = self._buckets.get(address)
        if bucket is None:
            return
        bucket.timer = None
        self._bucket(address)  # refill
        off = conf.CONNECTS_PER_SECOND_PER_ADDRESS <= 0
        while bucket.queue and (bucket.tokens >= 1.0 or off) and not self._full(address):
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            arrival = bucket.queue.popleft()
            self._queued_total -= 1
            QUEUED.dec()
            arrival.serve()
        if bucket.queue:
            # full: look again when sessions may have authorized or closed
            self._schedule(address, bucket, FULL_RECHECK if self._full(address) else 0.0)

    def _refuse_later(self, address: str, arrival: Arrival) -> None:
        REFUSED.inc()
        if self._held_total >= conf.MAX_UNAUTHENTICATED:
            loop = asyncio.get_running_loop()
            loop.call_soon(arrival.refuse, max(1, math.ceil(conf.AUTH_FAILURE_MAX_DELAY)))
            return
        hold = self._throttle.hold(address)
        self._held_total += 1
        asyncio.get_running_loop().call_later(hold, self._answer_refused, arrival, hold)

    def _answer_refused(self, arrival: Arrival, hold: float) -> None:
        self._held_total -= 1
        arrival.refuse(max(1, math.ceil(hold)))

    def _sweep(self, now: float, burst: float) -> None:
        for address, bucket in list(self._buckets.items()):
            full = bucket.tokens + (now - bucket.stamp) * self.rate(address) >= burst
            if full and not bucket.queue and bucket.timer is None:
                del self._buckets[address]
        # As in Throttle._sweep: with many addresses still active, wait for twice as many.
        self._sweep_at = max(SWEEP_AT, 2 * len(self._buckets))


_admission: Admission | None = None


def get_admission() -> Admission:
    """The admission of this process (one event loop accepts every connection)."""
    global _admission
    if _admission is None:
        _admission = Admission()
    return _admission
