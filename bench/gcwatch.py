"""Run a Python server and log its garbage-collector pauses (``fanout.py --gc-log``).

    python bench/gcwatch.py -m uvicorn ARGS...      # like python -m uvicorn ARGS...
    python bench/gcwatch.py manage.py rundemo ...   # like python manage.py rundemo ...

Every collection that takes 10 ms or more is written to stderr as
``GCPAUSE <epoch s> <generation> <ms> <collected>``.
"""

from __future__ import annotations

import gc
import runpy
import sys
import time
from typing import Any

_start = [0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _start[0]) * 1000.0
    if ms >= 10.0:
        sys.stderr.write(
            f"GCPAUSE {time.time():.3f} {info['generation']} {ms:.1f} {info['collected']}\n"
        )
        sys.stderr.flush()


def main() -> None:
    gc.callbacks.append(_callback)
    args = sys.argv[1:]
    if args[:1] == ["-m"]:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        sys.path.insert(0, str(__import__("pathlib").Path(args[0]).resolve().parent))
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
