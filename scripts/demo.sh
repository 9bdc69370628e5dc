#!/usr/bin/env bash
# One command for the whole demo on a fresh machine with Python 3.11:
# virtualenv, dependencies, migrations, demo users and data, then daphne
# with the demo quote feed. Embedded default: SQLite and the in-process
# backend; export REDIS_URL=redis://127.0.0.1:6379/0 to use Redis instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python manage.py migrate --verbosity 0
.venv/bin/python manage.py demo_data --base-url "http://${HOST:-127.0.0.1}:${PORT:-8000}"
exec .venv/bin/python manage.py rundemo --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
