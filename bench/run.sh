#!/usr/bin/env bash
# Fan-out benchmark of broker_ws: one command, from the repository root.
#
#   bash bench/run.sh                                  # scenarios a,b,c x all servers, ~5 min
#   bash bench/run.sh --runs 3                         # medians of 3 runs
#   bash bench/run.sh --scenario a --servers broker_ws,plain
#
# Needs Redis on 127.0.0.1:6379 (REDIS_URL overrides; db 5 is used and
# flushed between servers). Every other argument goes to bench/fanout.py
# (see bench/README.md, or `bash bench/run.sh --help`).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/5}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "bench: creating $VENV and installing the project's requirements"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r requirements.txt
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt

if ! "$VENV/bin/python" - "$REDIS_URL" <<'PY'
import sys
import redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2, socket_timeout=2).ping()
except Exception as exc:
    sys.exit(f"bench: Redis is not reachable at {sys.argv[1]} ({exc}); start it "
             "(e.g. `redis-server --daemonize yes`) or set BENCH_REDIS_URL")
PY
then
    exit 1
fi

exec "$VENV/bin/python" bench/fanout.py --redis-url "$REDIS_URL" "$@"
