"""Connect storms by token kind: what the logins in the token save when 1000 sessions
connect at once.

    .venv/bin/python bench/auth_storm.py [--runs 3] [--sessions 1000] [--postgres]

Each run starts the demo twice on a fresh port (``manage.py rundemo --no-feed``,
daphne; SQLite as ``tests.servers.deployment("embedded")``, or PostgreSQL with
``--postgres``), once per token kind, and ``--sessions`` sessions, each of a user
and login of its own, connect at the same instant and send their token (no
``resume``):

- **simplejwt** (the baseline, the default ``TOKEN_AUTHENTICATOR``): simplejwt
  access tokens; each batch of concurrent authorizations reads its users, their
  logins (``LOGIN_RESOLVER``) and their revocations;
- **logins claim**: HS256 tokens carrying ``{"sub": id, "logins": [login]}``,
  checked by ``broker_ws.auth.JWTAuthenticator(logins_claim="logins")``
  (:data:`bench.own_tokens.AUTHENTICATOR`): no user or login read, only the
  revocation check, one query per batch.

Printed per run and as medians over the runs: the time from the first connect
to the last ``authorized``, p50/p99 of each session's ``authorized``, and the
server's CPU seconds for the storm; then the ratios logins claim / simplejwt.
The clients and the measurement are :mod:`bench.storm`'s (raw sockets in
``--client-procs`` processes, their addresses spread over 127.0.0.2-50); the
kinds alternate within a run so that drift of the machine's load hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.own_tokens import AUTHENTICATOR_PATH, issue  # noqa: E402
from bench.storm import LIMITS, make_users, median, one_run  # noqa: E402
from tests.servers import deployment  # noqa: E402

KINDS = ("simplejwt", "logins claim")


def storm_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options :func:`bench.storm.one_run` reads: one storm, no resume."""
    return argparse.Namespace(
        sessions=args.sessions,
        storms=1,
        client_procs=args.client_procs,
        hold=0.5,
        settle=1.5,
        timeout=args.timeout,
        close="frame",
        no_spread=False,
        resume=False,
        wait_quiet=args.wait_quiet,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--postgres", action="store_true", help="the demo on PostgreSQL")
    parser.add_argument("--wait-quiet", type=float, default=0.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with (
        tempfile.TemporaryDirectory(prefix="bws-auth-storm-") as tmp,
        deployment("postgres" if args.postgres else "embedded", Path(tmp)) as dep,
    ):
        base = dict(dep.env, DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost")
        envs = {
            "simplejwt": dict(base, BROKER_WS_JSON=json.dumps(LIMITS)),
            "logins claim": dict(
                base,
                BROKER_WS_JSON=json.dumps({**LIMITS, "TOKEN_AUTHENTICATOR": AUTHENTICATOR_PATH}),
            ),
        }
        simplejwt_users = make_users(args.sessions, envs["simplejwt"])
        users = {
            "simplejwt": simplejwt_users,
            "logins claim": [
                (login, issue(user_id=login.removeprefix("S"), logins=[login]))
                for login, _ in simplejwt_users
            ],
        }
        print(
            f"{args.sessions} sessions connecting at once, a user and login each, "
            f"{'PostgreSQL' if args.postgres else 'SQLite'}, daphne, {args.runs} run(s); "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
            flush=True,
        )
        for index in range(args.runs):
            order = KINDS if index % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                run = one_run(index, storm_args(args), envs[kind], Path(tmp), users[kind])
                storm = run.storms[0]
                row = {
                    "seconds": storm.seconds,
                    "p50": storm.p50,
                    "p99": storm.p99,
                    "server_cpu": storm.server_cpu,
                    "authorized": storm.authorized,
                    "failures": storm.failures,
                }
                figures[kind].append(row)
                print(
                    f"  run {index + 1} {kind:>12}: {storm.authorized} authorized in "
                    f"{storm.seconds:.2f} s (p50 {storm.p50:.2f}, p99 {storm.p99:.2f}), "
                    f"server CPU {storm.server_cpu:.2f} s"
                    + (f", FAILED {storm.failures}" if storm.failures else ""),
                    flush=True,
                )
    summary = report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if any(row["failures"] for rows in figures.values() for row in rows):
        raise SystemExit("some sessions were not authorized")


def report(figures: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    keys = ("seconds", "p50", "p99", "server_cpu")
    medians = {kind: {k: median([r[k] for r in figures[kind]]) for k in keys} for kind in KINDS}
    print(f"\nmedians of {args.runs} run(s), {args.sessions} sessions:")
    print("token kind      last authorized s   p50 s   p99 s   server CPU s")
    for kind in KINDS:
        m = medians[kind]
        print(
            f"{kind:<14} {m['seconds']:>18.2f} {m['p50']:>7.2f} {m['p99']:>7.2f}"
            f" {m['server_cpu']:>14.2f}"
        )
    ratios = {k: medians["logins claim"][k] / medians["simplejwt"][k] for k in keys}
    print(
        "logins claim / simplejwt: " + ", ".join(f"{k} {ratio:.2f}x" for k, ratio in ratios.items())
    )
    return {"medians": medians, "ratios": ratios, "runs": figures, "args": vars(args)}


if __name__ == "__main__":
    main()
