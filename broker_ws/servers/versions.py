"""The versions of the servers' libraries broker_ws's shortcuts were tested with.

:mod:`broker_ws.servers.daphne` and :mod:`broker_ws.servers.uvicorn` read
private attributes of these libraries. Outside the ranges below they may
still work (and each shortcut turns itself off if it fails), but nobody has
run the test suite against them: the system check ``broker_ws.W002`` says so
at start-up. A range is ``(lowest, first untested)``; only installed
libraries are checked.
"""

from __future__ import annotations

import re
from importlib import metadata

#: Distribution name -> (lowest tested, first version not tested).
TESTED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "daphne": ((4, 2), (4, 3)),
    "autobahn": ((24, 4), (27,)),
    "Twisted": ((24, 7), (27,)),
    "uvicorn": ((0, 50), (0, 56)),
    "websockets": ((13,), (18,)),
}


def _release(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string (``"26.10.0rc1"`` -> (26, 10, 0))."""
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()


def untested() -> list[tuple[str, str, str]]:
    """``(library, installed version, tested range)`` of each library out of range."""
    found = []
    for name, (lowest, beyond) in TESTED.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        release = _release(installed)
        if not lowest <= release < beyond:
            tested = f">={'.'.join(map(str, lowest))},<{'.'.join(map(str, beyond))}"
            found.append((name, installed, tested))
    return found
