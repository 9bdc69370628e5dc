"""Prometheus metrics of one server process.

Each process counts its own sessions and frames (a Prometheus server
scrapes every process, as it would any multi-process service). The counters
are touched once per fan-out, not once per session, so the hot path pays
one increment per quote.

Presence is the exception: :data:`PRESENCE` is a registry of its own, read at
each scrape from the bus (:mod:`broker_ws.session.presence`), so every process
reports the same deployment-wide values (aggregate them with ``max``, not
``sum``), and collecting the default registry never touches Redis.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)

SESSIONS = Gauge("broker_ws_sessions", "Open WebSocket sessions.")
AUTHENTICATED = Gauge("broker_ws_authenticated_sessions", "Sessions that have authorized.")
SUBSCRIPTIONS = Gauge("broker_ws_subscriptions", "Symbol subscriptions over all sessions.")
FRAMES = Counter("broker_ws_frames_sent", "Data frames handed to sessions, by marker.", ["marker"])
CLOSES = Counter("broker_ws_closes", "Sessions closed by the server, by close code.", ["code"])
CONNECTIONS_QUEUED = Gauge(
    "broker_ws_connections_queued",
    "New connections waiting, unread, for their address's turn (broker_ws/auth/admission.py).",
)
CONNECTIONS_REFUSED = Counter(
    "broker_ws_connections_refused",
    "New connections answered 429 at the accept, before any upgrade.",
)
AUTH_FAILURES = Counter("broker_ws_auth_failures", "Refused authorization messages.")
RESUMES = Counter("broker_ws_resumes", "Logins named in a resume, by outcome.", ["outcome"])
FAST_PATH_DISABLED = Counter(
    "broker_ws_fast_path_disabled",
    "Server shortcuts turned off after an unexpected error (broker_ws/servers/base.py).",
    ["server", "path"],
)

QUOTE_FRAMES = FRAMES.labels(marker="t")
_ACCOUNT_FRAMES = {marker: FRAMES.labels(marker=marker) for marker in "boan"}


def count_frames(frame: str, sessions: int) -> None:
    """Count one frame handed to ``sessions`` sessions (marker read from the frame)."""
    counter = _ACCOUNT_FRAMES.get(frame[2:3])  # '["b",...' -> 'b'
    if counter is not None and sessions:
        counter.inc(sessions)


class PresenceCollector:
    """Sessions per login over every live server process, read at each scrape.

    Totals always; one series per login only for the ``PRESENCE_METRICS_LOGINS``
    logins with the most sessions (a series per login would grow with the
    customer base). Nothing is reported while Redis cannot be read.
    """

    def collect(self) -> Iterator[Metric]:
        from broker_ws.conf import conf
        from broker_ws.exceptions import Unavailable
        from broker_ws.session.presence import presence_by_process

        try:
            per_process = presence_by_process()
        except Unavailable as exc:
            logger.info("broker_ws: presence left out of the metrics (%s)", exc.__cause__)
            return
        total: dict[str, int] = {}
        for counts in per_process.values():
            for login, sessions in counts.items():
                total[login] = total.get(login, 0) + sessions
        yield GaugeMetricFamily(
            "broker_ws_presence_processes",
            "Server processes with authorized sessions (all processes, from the bus).",
            value=len(per_process),
        )
        yield GaugeMetricFamily(
            "broker_ws_presence_logins",
            "Logins with at least one session (all processes, from the bus).",
            value=len(total),
        )
        yield GaugeMetricFamily(
            "broker_ws_presence_sessions",
            "Sessions summed over logins (all processes, from the bus).",
            value=sum(total.values()),
        )
        top = conf.PRESENCE_METRICS_LOGINS
        if top > 0:
            family = GaugeMetricFamily(
                "broker_ws_presence_login_sessions",
                f"Sessions of the {top} logins with the most (all processes, from the bus).",
                labels=["login"],
            )
            for login, sessions in heapq.nlargest(top, total.items(), key=lambda kv: kv[1]):
                family.add_metric([login], sessions)
            yield family


#: Presence, collected apart from the default registry (see the module docstring).
PRESENCE = CollectorRegistry(auto_describe=False)
PRESENCE.register(PresenceCollector())
