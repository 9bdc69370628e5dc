"""Run ``manage.py rundemo`` with the cycle collector watched: ``python tests/gc_probe.py
REPORT manage.py rundemo ...``.

Every object the cycle collector frees is kept (``gc.DEBUG_SAVEALL``) and
counted by type (and kept: the server's memory grows by what the collector
found, which for a test run is little). On SIGUSR1 the server (in its event loop's thread) runs a
full collection and writes one JSON line to REPORT: ``live``, the daphne
WebSocket protocols still alive, and ``garbage``, per type name, how many
objects of the types below the collector had to free since start-up. A closed
session that reference counting freed never shows up there.
"""

from __future__ import annotations

import gc
import json
import runpy
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

WATCHED = (
    "broker_ws.session.consumer.StreamConsumer",
    "broker_ws.session.outgoing.Outgoing",
    "daphne.ws_protocol.WebSocketProtocol",
    "daphne.http_protocol.WebRequest",
    "twisted.web.http.HTTPChannel",
    "twisted.internet.tcp.Server",
    "broker_ws.servers.daphne._held_connection_class.<locals>.HeldConnection",
)


def main() -> None:
    report = Path(sys.argv[1])

    def name(obj: Any) -> str:
        kind = type(obj)
        return f"{kind.__module__}.{kind.__qualname__}"

    def write_report() -> None:
        gc.collect()
        # gc.garbage keeps every object found (freeing them would hand the same
        # cycles back to the next collection): each is counted once.
        freed = Counter(n for n in map(name, gc.garbage) if n in WATCHED)
        live = sum(1 for obj in gc.get_objects() if name(obj) == WATCHED[2])
        with report.open("a") as out:
            out.write(json.dumps({"live": live, "garbage": dict(freed)}) + "\n")

    def on_usr1(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(write_report)  # type: ignore[attr-defined]

    gc.set_debug(gc.DEBUG_SAVEALL)
    signal.signal(signal.SIGUSR1, on_usr1)
    sys.argv = sys.argv[2:]
    sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
