"""Where a server process is in the outbox, including rows not yet visible.

Outbox ids are given when a row is inserted, but rows become visible when
their transaction commits, which need not be in id order (PostgreSQL, long
transactions). Reading ``id > last seen`` alone would skip a row whose
transaction was still open at the time. So ids missing below the last one
seen are remembered as gaps and asked for again on every read until they
appear or :data:`GAP_TIMEOUT` passes (a rolled-back transaction leaves its
id missing forever).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

#: Seconds a missing id is looked for: longer than any sane transaction.
GAP_TIMEOUT = 120.0
#: Most ids remembered as missing; the oldest are dropped beyond that.
MAX_GAPS = 5000


class OutboxCursor:
    """The last outbox id read, and the missing ids below it."""

    def __init__(self, position: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.position = position
        self.gaps: dict[int, float] = {}
        self._clock = clock

    def missing(self) -> list[int]:
        """Ids to ask for again, after dropping those looked for long enough."""
        if self.gaps:
            expired = self._clock() - GAP_TIMEOUT
            for gap in [gap for gap, since in self.gaps.items() if since < expired]:
                del self.gaps[gap]
        return list(self.gaps)

    def advance(self, ids: Iterable[int]) -> None:
        """Record the ids a read returned (in ascending order)."""
        now = self._clock()
        for event_id in ids:
            if event_id in self.gaps:
                del self.gaps[event_id]
            elif event_id > self.position:
                for gap in range(max(self.position + 1, event_id - MAX_GAPS), event_id):
                    self.gaps[gap] = now
                self.position = event_id
        while len(self.gaps) > MAX_GAPS:
            del self.gaps[next(iter(self.gaps))]
