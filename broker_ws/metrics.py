"""Prometheus metrics of one server process.

Each process counts its own sessions and frames (a Prometheus server
scrapes every process, as it would any multi-process service). The counters
are touched once per fan-out, not once per session, so the hot path pays
one increment per quote.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
