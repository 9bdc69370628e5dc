#!/usr/bin/env bash
# Build broker_ws as a host installs it, and check the bare installation.
#
#   1. `python -m build` in a venv of its own: a wheel and an sdist, failing if the build
#      prints any deprecation warning.
#   2. A fresh venv with the wheel alone (no extras): none of redis, hiredis, uvicorn or
#      websockets is installed; a minimal host project with broker_ws in INSTALLED_APPS
#      passes `manage.py check`, imports the public API, the routing and the views, and
#      reports its version; with REDIS_URL set, the check fails with broker_ws.E012.
#
# The suite against the installed wheel (with every extra) is scripts/matrix.sh's
# py313-django61 cell, which calls this script first.
#
# Usage: bash scripts/package.sh [--outdir DIR]   (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUTDIR="$PWD/dist"
if [ "${1:-}" = --outdir ]; then OUTDIR="$(realpath -m "$2")"; fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/broker_ws-package.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PIP=(--quiet --disable-pip-version-check)

mkdir -p "$OUTDIR"; rm -f "$OUTDIR"/broker_ws-*
echo "== build (wheel and sdist)"
"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/python" -m pip install "${PIP[@]}" "build>=1.2"
# A copy, so that the build leaves no egg-info in the working tree.
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | (mkdir "$WORK/src" && tar -xf - -C "$WORK/src")
(cd "$WORK/src" && "$WORK/build-venv/bin/python" -m build --outdir "$OUTDIR" \
    >"$WORK/build.log" 2>&1) || { cat "$WORK/build.log"; exit 1; }
if grep -i -E "deprecat" "$WORK/build.log"; then
    echo "FAIL: the build printed deprecation warnings (above)" >&2
    exit 1
fi
WHEEL="$(ls "$OUTDIR"/broker_ws-*.whl)"
ls "$OUTDIR"

echo "== the bare wheel: no extras, a minimal host"
"$PYTHON" -m venv "$WORK/bare"
"$WORK/bare/bin/python" -m pip install "${PIP[@]}" "$WHEEL"
mkdir "$WORK/host"
cat >"$WORK/host/host_settings.py" <<'PY'
SECRET_KEY = "package-check"
INSTALLED_APPS = [
    "django.contrib.auth", "django.contrib.contenttypes", "daphne", "channels",
    "rest_framework", "broker_ws",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
PY
(cd "$WORK/host" && DJANGO_SETTINGS_MODULE=host_settings "$WORK/bare/bin/python" - <<'PY'
import importlib.metadata
import importlib.util
import sys

import django
from django.core.management import call_command

django.setup()
import broker_ws
import broker_ws.routing
import broker_ws.views

assert "site-packages" in broker_ws.__file__, broker_ws.__file__
assert broker_ws.__version__ == importlib.metadata.version("broker-ws"), broker_ws.__version__
present = [m for m in ("redis", "hiredis", "uvicorn", "websockets") if importlib.util.find_spec(m)]
assert not present, f"installed without being asked for: {present}"
call_command("check", fail_level="WARNING")
print(f"broker_ws {broker_ws.__version__} from {broker_ws.__file__}, "
      f"Django {django.get_version()}, Python {sys.version.split()[0]}: check passed, no extras")
PY
)

(cd "$WORK/host" && DJANGO_SETTINGS_MODULE=host_settings \
    "$WORK/bare/bin/python" - <<'PY'
import django
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError

settings.BROKER_WS = {"REDIS_URL": "redis://127.0.0.1:6379/0"}
django.setup()
try:
    call_command("check")
except SystemCheckError as exc:
    assert "broker_ws.E012" in str(exc), exc
    print("REDIS_URL without the redis extra: broker_ws.E012")
else:
    raise SystemExit("FAIL: REDIS_URL without redis-py passed the checks")
PY
)
echo "built: $WHEEL"
