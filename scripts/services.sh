#!/usr/bin/env bash
# Make sure the Redis and PostgreSQL the tests use are up on loopback: check,
# start them with this machine's own commands if they are down, and fail
# loudly if that does not work. Sourced by scripts/test.sh and .ci/run.
# REDIS_URL / POSTGRES_URL point the tests elsewhere (then nothing is started).

wait_until() {  # wait_until SECONDS COMMAND...: true once COMMAND succeeds
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.5
    done
}

redis_up() { python3 - <<'PY'
import os, socket, sys
from urllib.parse import urlsplit
url = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
try:
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

postgres_up() { python3 - <<'PY'
import os, socket, sys
from urllib.parse import urlsplit
url = urlsplit(os.environ.get("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"))
try:
    socket.create_connection((url.hostname or "127.0.0.1", url.port or 5432), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

ensure_redis() {
    redis_up && return 0
    if [ -z "${REDIS_URL:-}" ] && command -v redis-server >/dev/null; then
        echo "services: Redis is down; starting it" >&2
        mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 || true
        wait_until 20 redis_up && return 0
    fi
    echo "services: FATAL: Redis is not reachable at ${REDIS_URL:-redis://127.0.0.1:6379/0}" \
         "and could not be started; the tests need a real Redis." >&2
    return 1
}

ensure_postgres() {
    postgres_up && return 0
    if [ -z "${POSTGRES_URL:-}" ] && command -v pg_ctlcluster >/dev/null; then
        echo "services: PostgreSQL is down; starting it" >&2
        for version in $(ls /etc/postgresql 2>/dev/null); do
            pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
        done
        wait_until 30 postgres_up && return 0
    fi
    echo "services: FATAL: PostgreSQL is not reachable at" \
         "${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432} and could not be started;" \
         "the end-to-end tests need a real PostgreSQL." >&2
    return 1
}
