"""Heartbeats: ``["h", ts_ms, {"<login>": <seq>, ...}]`` to sessions sent nothing.

An authorized session to which nothing at all has been written for
``HEARTBEAT_INTERVAL`` seconds is sent a heartbeat naming, per login of the
session, the seq of the last frame of that login the process has delivered
(0 before the first). It tells a client two things WebSocket pings cannot
(browsers never see pings): the connection is alive, and whether it missed
the last frame of a login (a heartbeat seq above the last one it saw), which
it would otherwise notice only when the next frame comes.

Cost: one task per process wakes every :data:`TICK` seconds and looks at
each authorized session's count of written frames (an integer compare; a
session that was written to since the last look is skipped). Nothing is
done per frame beyond counting it (:attr:`Outgoing.written
<broker_ws.session.outgoing.Outgoing.written>`). Sessions of the same
logins due in one tick share one encoded heartbeat. A heartbeat is
therefore sent between ``HEARTBEAT_INTERVAL`` and ``HEARTBEAT_INTERVAL +
TICK`` seconds after the session's last frame (an idle session gets one
every interval, rounded up to whole ticks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from broker_ws.conf import conf
from broker_ws.session.sessions import Session, guarded
from broker_ws.wire import frames
from broker_ws.wire.encoded import EncodedFrame

logger = logging.getLogger(__name__)

#: Seconds between two looks at the sessions.
TICK = 1.0


class Heartbeats:
    """The heartbeat sweep of one hub."""

    def __init__(
        self,
        sessions: Callable[[], Iterable[Session]],
        seqs_of: Callable[[Iterable[str]], Mapping[str, int]],
    ) -> None:
        """``sessions()``: the authorized sessions; ``seqs_of(logins)``: the last
        seq delivered of each login."""
        self._sessions = sessions
        self._seqs_of = seqs_of

    async def run(self) -> None:
        """Look at the sessions every :data:`TICK` s until cancelled (returns at once
        when ``HEARTBEAT_INTERVAL`` is 0)."""
        interval = conf.HEARTBEAT_INTERVAL
        if interval <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(TICK, interval))
            try:
                await self.beat(loop.time(), interval)
            except Exception:
                logger.exception("broker_ws: a heartbeat sweep failed")

    async def beat(self, now: float, interval: float) -> int:
        """Send a heartbeat to each session due one at ``now``; return how many."""
        due: list[Session] = []
        for session in tuple(self._sessions()):
            written = session.frames_written()
            if written != session.heartbeat_mark:
                session.heartbeat_mark = written
                session.heartbeat_since = now
            elif now - session.heartbeat_since >= interval and not session.closed:
                due.append(session)
        if not due:
            return 0
        ts_ms = frames.now_ms()
        shared: dict[tuple[str, ...], EncodedFrame] = {}
        for session in due:
            logins = tuple(session.stream_logins())
            frame = shared.get(logins)
            if frame is None:
                seqs = self._seqs_of(logins)
                frame = shared[logins] = EncodedFrame(
                    frames.heartbeat(ts_ms, {login: seqs.get(login, 0) for login in logins})
                )
            await guarded(session.push(frame))
            # The heartbeat is not activity: the next one is due an interval after it.
            session.heartbeat_mark = session.frames_written()
            session.heartbeat_since = now
        return len(due)
