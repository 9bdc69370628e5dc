#!/usr/bin/env bash
# One command for the whole test suite on a fresh machine with Python 3.11:
# virtualenv, dependencies, Redis and PostgreSQL on loopback (started if
# they are installed but down), then pytest. Tests of the Redis backend and
# the end-to-end tests use the real services, never mocks. Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
source scripts/services.sh
ensure_redis
ensure_postgres
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/python -m pytest "$@"
