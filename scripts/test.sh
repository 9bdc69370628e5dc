#!/usr/bin/env bash
# One command for the whole test suite on a fresh machine with Python 3.11:
# virtualenv, dependencies, then pytest. Redis must be reachable on
# 127.0.0.1:6379 (REDIS_URL overrides); tests of the Redis backend use it
# for real. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/python -m pytest "$@"
