"""Run a Python server and log its garbage-collector pauses (``fanout.py --gc-log``).

    python bench/gcwatch.py -m uvicorn ARGS...      # like python -m uvicorn ARGS...
    python bench/gcwatch.py manage.py rundemo ...   # like python manage.py rundemo ...

Every collection that takes 10 ms or more is written to stderr as
``GCPAUSE <epoch s> <generation> <ms> <collected>``. ``kill -USR1 <pid>``
writes how many objects the collector tracks (the frozen ones apart), the
collections so far and the seconds they took per generation, and the 30 most
common types of the tracked objects, as ``GCTYPES`` lines: what a full
collection walks. ``kill -USR2`` remembers the objects of the oldest
generation; the next ``kill -USR2`` writes, as ``GCPROMOTED`` lines, the types
of those that entered it since: what makes full collections come sooner.
"""

from __future__ import annotations

import collections
import gc
import os
import runpy
import signal
import sys
import time
from typing import Any

_start = [0.0]
#: Seconds spent in collections so far, per generation.
_total = [0.0, 0.0, 0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _start[0]) * 1000.0
    _total[info["generation"]] += ms / 1000.0
    if ms >= 10.0:
        sys.stderr.write(
            f"GCPAUSE {time.time():.3f} {info['generation']} {ms:.1f} {info['collected']}\n"
        )
        sys.stderr.flush()


def _count_types(signum: int, frame: Any) -> None:
    tracked = gc.get_objects()
    counts = collections.Counter(type(obj).__qualname__ for obj in tracked)
    spent = " ".join(f"{seconds:.3f}" for seconds in _total)
    runs = " ".join(str(stats["collections"]) for stats in gc.get_stats())
    lines = [
        f"GCTYPES {time.time():.3f} tracked {len(tracked)} frozen {gc.get_freeze_count()}"
        f" collections {runs} seconds {spent}"
    ]
    lines += [f"GCTYPES {count:8d} {name}" for name, count in counts.most_common(30)]
    del tracked
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


_old_ids: list[set[int]] = []


def _promoted(signum: int, frame: Any) -> None:
    """First signal: remember the oldest generation; next: the types that entered it since."""
    oldest = gc.get_objects(generation=2)
    ids = {id(obj) for obj in oldest}
    if _old_ids:
        new = [obj for obj in oldest if id(obj) not in _old_ids[0]]
        counts = collections.Counter(type(obj).__qualname__ for obj in new)
        lines = [f"GCPROMOTED {time.time():.3f} new in gen2 {len(new)} of {len(oldest)}"]
        lines += [f"GCPROMOTED {count:8d} {name}" for name, count in counts.most_common(40)]
        sample: dict[str, Any] = {}
        for obj in new:
            sample.setdefault(type(obj).__qualname__, obj)
        for name, _count in counts.most_common(12):
            lines.append(f"GCPROMOTED e.g. {name}: {repr(sample[name])[:300]}")
        del new, sample
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        _old_ids.clear()
    _old_ids.append(ids)
    del oldest


def main() -> None:
    gc.callbacks.append(_callback)
    signal.signal(signal.SIGUSR1, _count_types)
    signal.signal(signal.SIGUSR2, _promoted)
    threshold = os.environ.get("GCWATCH_THRESHOLD")
    if threshold:  # an experiment: "700,10,10" is CPython 3.11's default
        gc.set_threshold(*(int(part) for part in threshold.split(",")))
        # Fixed for the run: the server's own set_threshold (the demo's asgi.py) is ignored.
        gc.set_threshold = lambda *args: None
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
