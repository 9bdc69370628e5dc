#!/usr/bin/env bash
# The supported matrix, one venv per cell (under .matrix/, ignored by git), built with pip.
#
#   cell                  Python  Django  server libraries                   tests   broker_ws from
#   py311-django52        3.11    5.2     newest                             all     the source tree
#   py313-django61        3.13    6.1     newest                             all     the built wheel
#   py312-django60-oldest 3.12    6.0     oldest supported: daphne 4.2.2,    server  the built wheel
#                                         autobahn 24.4, Twisted 24.7,       internals
#                                         uvicorn 0.50, websockets 13
#
# "server internals" are the tests that touch daphne's, autobahn's, Twisted's and
# uvicorn's private attributes or run the real servers: direct writes, slow consumers,
# pings, oversized messages, drains and the end-to-end tests. The wheel cells build
# broker_ws with scripts/package.sh and run the tests from a copy of the repository
# without broker_ws/, so that only the installed package can be imported.
#
# py311-django52 is what `bash scripts/test.sh` (the README's test command) runs on a
# machine whose python3 is 3.11; .ci/run runs that command and then the other cells:
#   bash scripts/matrix.sh py313-django61 py312-django60-oldest
# With no argument every cell runs. An interpreter that cannot be found fails the run;
# a cell is never skipped. Interpreters are looked up as pythonX.Y on PATH, then under
# `pyenv root`. Extra pytest arguments go after `--`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/services.sh
ensure_redis
ensure_postgres

INTERNALS=(tests/test_direct_write.py tests/test_slow_consumer.py tests/test_pings.py
    tests/test_oversize.py tests/test_drain.py tests/test_e2e.py tests/test_outgoing.py)

cell_python() { case "$1" in py311-*) echo 3.11 ;; py312-*) echo 3.12 ;; py313-*) echo 3.13 ;; esac; }
cell_pins() {
    case "$1" in
        py311-django52) echo "django~=5.2.0" ;;
        py313-django61) echo "django~=6.1.0" ;;
        py312-django60-oldest)
            echo "django~=6.0.0 daphne==4.2.2 autobahn~=24.4.0 twisted~=24.7.0"
            echo "uvicorn[standard]~=0.50.0 websockets~=13.0" ;;
    esac
}

find_python() {  # find_python 3.13: the path of a CPython 3.13 interpreter, or fail
    local version="$1" candidate
    for candidate in "$(command -v "python$version" || true)" \
        $(ls -d "$(pyenv root 2>/dev/null || echo /nonexistent)/versions/$version".*/bin/python"$version" 2>/dev/null | sort -V -r); do
        if [ -n "$candidate" ] && [ -x "$candidate" ] &&
            [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$version" ]; then
            echo "$candidate"
            return 0
        fi
    done
    echo "FAIL: no Python $version interpreter (python$version on PATH, or under \`pyenv root\`/versions)" >&2
    return 1
}

CELLS=()
PYTEST_EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; PYTEST_EXTRA=("$@"); break ;;
        py311-django52 | py313-django61 | py312-django60-oldest) CELLS+=("$1"); shift ;;
        *) echo "unknown cell: $1 (py311-django52, py313-django61, py312-django60-oldest)" >&2; exit 2 ;;
    esac
done
[ ${#CELLS[@]} -gt 0 ] || CELLS=(py311-django52 py313-django61 py312-django60-oldest)

# Every interpreter first: a missing one fails before anything runs.
declare -A PYTHONS
for cell in "${CELLS[@]}"; do
    PYTHONS[$cell]="$(find_python "$(cell_python "$cell")")"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/broker_ws-matrix.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
WHEEL=""
build_wheel() {
    [ -n "$WHEEL" ] && return 0
    bash scripts/package.sh --outdir "$WORK/dist"
    WHEEL="$(ls "$WORK"/dist/*.whl)"
}

PIP=(--quiet --disable-pip-version-check)
declare -A RESULT
for cell in "${CELLS[@]}"; do
    started=$SECONDS
    echo "== $cell: ${PYTHONS[$cell]}"
    venv="$ROOT/.matrix/$cell"
    [ -x "$venv/bin/python" ] || "${PYTHONS[$cell]}" -m venv "$venv"
    # shellcheck disable=SC2046  # the pins are words
    if [ "$cell" = py311-django52 ]; then
        "$venv/bin/python" -m pip install "${PIP[@]}" -r requirements.txt $(cell_pins "$cell")
        "$venv/bin/python" -m pip uninstall "${PIP[@]}" -y broker-ws 2>/dev/null || true
        tree="$ROOT"
        tests=()
    else
        build_wheel
        "$venv/bin/python" -m pip install "${PIP[@]}" "$WHEEL[redis,uvicorn,jwt,client]" \
            -r requirements.txt $(cell_pins "$cell")
        "$venv/bin/python" -m pip install "${PIP[@]}" --force-reinstall --no-deps "$WHEEL"
        tree="$WORK/tree-$cell"
        mkdir "$tree"
        git ls-files -z --cached --others --exclude-standard | grep -z -v '^broker_ws/' |
            tar --null -T - -cf - | tar -xf - -C "$tree"
        tests=()
        [ "$cell" = py312-django60-oldest ] && tests=("${INTERNALS[@]}")
    fi
    "$venv/bin/python" - <<'PY'
import importlib.metadata as md, sys
names = ["django", "daphne", "autobahn", "twisted", "uvicorn", "websockets", "channels"]
print("  Python", sys.version.split()[0], " ".join(f"{n} {md.version(n)}" for n in names))
PY
    status=0
    (cd "$tree" && "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        ${tests[@]+"${tests[@]}"} ${PYTEST_EXTRA[@]+"${PYTEST_EXTRA[@]}"}) || status=$?
    RESULT[$cell]="$([ $status -eq 0 ] && echo passed || echo "FAILED ($status)") in $((SECONDS - started)) s"
    echo "== $cell: ${RESULT[$cell]}"
done

echo "== matrix"
failed=0
for cell in "${CELLS[@]}"; do
    echo "  $cell: ${RESULT[$cell]}"
    case "${RESULT[$cell]}" in passed*) ;; *) failed=1 ;; esac
done
exit $failed
