"""Private Redis and PostgreSQL servers that a test may kill, restart and stall, for real.

The shared servers of this machine (Redis on 127.0.0.1:6379, PostgreSQL on
127.0.0.1:5432) serve every other test and are never touched here: each
instance below is a process of its own, on a free loopback port, with its
files in a temporary folder.

:class:`PrivateRedis`
    ``redis-server`` started by :func:`tests.test_faults.start_redis` on
    127.0.0.1 only, without persistence, so a restart comes back empty.
    :meth:`~PrivateRedis.stop` is SIGKILL (clients get no goodbye, their
    connections just die); :meth:`~PrivateRedis.start` brings it back on the
    same port, so every client configured with :attr:`~PrivateRedis.url` can
    reconnect.

:class:`PrivatePostgres`
    A cluster of its own (a copy of one made by ``initdb`` once per test
    process, with the newest ``/usr/lib/postgresql/<version>/bin`` found, else
    the ``initdb`` on ``PATH``), listening on 127.0.0.1 only, its unix socket
    inside the temporary folder, trust authentication for the ``postgres``
    role, fsync off. PostgreSQL refuses to
    run as root, so when the tests run as root, ``initdb`` and ``pg_ctl`` run as
    the ``postgres`` system user (``runuser``), which owns the folder.
    :meth:`~PrivatePostgres.stop` is an immediate shutdown (``pg_ctl stop -m
    immediate``: backends quit at once and clients see their connections die);
    :meth:`~PrivatePostgres.start` starts it again on the same port with the
    same data: everything committed before the stop is still there (crash
    recovery replays the WAL; fsync off only matters if the machine crashes).
    ``synchronous_commit`` stays on on purpose: off, the commits of the last
    ~200 ms before an immediate stop would be lost.

Stalls. ``stall()`` sends SIGSTOP to the server (for PostgreSQL: the
postmaster first, so it forks no new backend, then every child of it), and
``resume()`` sends SIGCONT. A stopped process keeps its sockets open and the
kernel still completes TCP handshakes into the listen backlog, so clients
neither get "connection refused" nor a reset: connects and queries simply
hang, as with a server that is overloaded or stuck, not dead. Server-side
timeouts (``statement_timeout``) cannot fire in a stopped server: only a
timeout on the client side (``connect_timeout``, a socket timeout, a thread
joined with a timeout) notices. A stalled server may be stopped: Redis's
SIGKILL ends a stopped process, and PostgreSQL's ``stop()`` (and the cleanup)
resume it first, since a stopped postmaster would not act on its shutdown
signal.

Both classes are context managers; leaving the ``with`` block (even by an
exception) stops the server and deletes its files, and an ``atexit`` hook
does the same for an instance that was never closed. They fail loudly, with
the reason, when a binary is missing or a server does not start.

:func:`private_deployment` is :func:`tests.servers.deployment`'s "redis" kind
(a migrated database with the demo data) on a private cluster and, optionally,
a private Redis.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Protocol

from tests.servers import Deployment, _base_env, free_port
from tests.test_faults import kill, start_redis

PG_ROOT = Path("/usr/lib/postgresql")
PG_USER = "postgres"
PG_START_TIMEOUT = 30


class _Closable(Protocol):
    def close(self) -> None: ...


_live: set[_Closable] = set()
_templates: dict[Path, Path] = {}  # PostgreSQL bin folder -> its initdb'd template cluster


@atexit.register
def _close_leftovers() -> None:
    """Stop the servers of instances that were never closed (a test run interrupted),
    and delete the template clusters."""
    for service in list(_live):
        with contextlib.suppress(Exception):
            service.close()
    for template in _templates.values():
        shutil.rmtree(template.parent, ignore_errors=True)


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (or is stopped); False once it exited, even if not yet reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} still alive {timeout} s after its shutdown")
        time.sleep(0.01)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, sig)


# --- Redis -------------------------------------------------------------------------


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free loopback port, without persistence."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found on PATH: install redis-server")
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stalled = False

    def __enter__(self) -> PrivateRedis:
        _live.add(self)
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``: the same before and after a restart."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the process lives (stalled or not)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def stalled(self) -> bool:
        """True between :meth:`stall` and :meth:`resume` (or :meth:`stop`)."""
        return self._stalled

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> None:
        """Start the server (empty) on :attr:`port`; return once it accepts connections."""
        if self.running:
            raise RuntimeError(f"private Redis on port {self.port} is already running")
        try:
            self._proc = start_redis(self.port)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(
                f"private redis-server did not start on 127.0.0.1:{self.port} ({e}); "
                "is the port taken by another process?"
            ) from e

    def stop(self) -> None:
        """SIGKILL the server (no goodbye to its clients) and reap it; a no-op if stopped."""
        kill(self._proc)  # SIGKILL also ends a SIGSTOPped process
        self._proc = None
        self._stalled = False

    def stall(self) -> None:
        """SIGSTOP the server: connections stay open, every command hangs."""
        if self._proc is None or not self.running:
            raise RuntimeError("cannot stall a private Redis that is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._stalled = True

    def resume(self) -> None:
        """SIGCONT a stalled server: it answers the commands that waited."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)
        self._stalled = False

    def close(self) -> None:
        """Stop the server for good."""
        self.stop()
        _live.discard(self)


# --- PostgreSQL --------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name)) or (0,)


def find_pg_bindir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: the newest Debian
    ``/usr/lib/postgresql/<version>/bin``, else the one on ``PATH``."""
    candidates = sorted(PG_ROOT.glob("*/bin"), key=lambda p: _version_key(p.parent), reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl", path=str(Path(initdb).parent)):
        return Path(initdb).parent
    raise RuntimeError(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found in {PG_ROOT}/<version>/bin "
        "nor on PATH: install the postgresql server package (Debian: postgresql-<version>) "
        "to run tests with a private PostgreSQL"
    )


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, in a temporary folder, on a free loopback port."""

    def __init__(self) -> None:
        self.bindir = find_pg_bindir()
        self._as_user: list[str] = []
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            try:
                self._owner = pwd.getpwnam(PG_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root and there is no {PG_USER!r} system user to run "
                    "PostgreSQL as (it refuses to run as root)"
                ) from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root and runuser (util-linux) is not on PATH")
            self._as_user = [runuser, "-u", PG_USER, "--"]
        self.port = free_port()
        self.root: Path | None = None
        self._stalled: list[int] = []

    def __enter__(self) -> PrivatePostgres:
        _live.add(self)
        try:
            self._make_cluster()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- paths and commands --------------------------------------------------------

    @property
    def data(self) -> Path:
        assert self.root is not None, "PrivatePostgres used outside its with block"
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        assert self.root is not None, "PrivatePostgres used outside its with block"
        return self.root / "postgres.log"

    def log(self) -> str:
        """What the server wrote to its log so far."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        """Run a PostgreSQL binary (as the postgres user when root); fail with its output."""
        return self._run_as_owner(str(self.bindir / tool), *args, timeout=timeout)

    def _run_as_owner(self, *cmd: str, timeout: float = 60) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        done = subprocess.run(
            [*self._as_user, *cmd],
            cwd=tempfile.gettempdir(),  # the user may not be able to enter the current one
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"private PostgreSQL: {' '.join(cmd)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n--- server log ---\n{self.log()[-4000:]}"
            )
        return done.stdout

    def _owned_tempdir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        return path

    def _template(self) -> Path:
        """A fresh cluster made by ``initdb`` once per test process; each instance
        copies it (~0.1 s) instead of running ``initdb`` (~1 s)."""
        template = _templates.get(self.bindir)
        if template is None or not (template / "PG_VERSION").is_file():
            template = self._owned_tempdir("bws-pg-template-") / "data"
            self._run(
                "initdb",
                "--pgdata",
                str(template),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            )
            _templates[self.bindir] = template
        return template

    def _make_cluster(self) -> None:
        """A copy of the template in a new folder, configured for :attr:`port`."""
        template = self._template()
        self.root = self._owned_tempdir("bws-pg-")
        self._run_as_owner("mkdir", str(self.root / "sock"))
        self._run_as_owner("cp", "-a", str(template), str(self.data))
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tests/services.py: a private, throw-away cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root / 'sock'}'\n"
                "fsync = off\n"  # synchronous_commit stays on: see the module docstring
                "full_page_writes = off\n"
                "max_connections = 200\n"
            )

    # --- the contract ------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """``postgres://postgres@127.0.0.1:PORT/dbname``: the same after a restart."""
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid, from ``postmaster.pid``; None if the server is not running."""
        if self.root is None:
            return None
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def running(self) -> bool:
        """True while the postmaster lives (stalled or not)."""
        return self.postmaster_pid() is not None

    @property
    def stalled(self) -> bool:
        """True between :meth:`stall` and :meth:`resume` (or :meth:`stop`)."""
        return bool(self._stalled)

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a fresh ``bws_test_<hex>`` by default); return its name."""
        import psycopg
        from psycopg import sql

        name = name or f"bws_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def start(self) -> None:
        """Start the server (same port, same data); return once it accepts connections."""
        if self.running:
            raise RuntimeError(f"private PostgreSQL on port {self.port} is already running")
        self._run(
            "pg_ctl",
            "start",
            "--wait",
            "--timeout",
            str(PG_START_TIMEOUT),
            "--pgdata",
            str(self.data),
            "--log",
            str(self.logfile),
            timeout=PG_START_TIMEOUT + 10,
        )

    def stop(self) -> None:
        """Immediate shutdown: backends quit at once, clients see their connections
        die; a stalled server is resumed first. A no-op if stopped."""
        if self._stalled:
            self.resume()
        pid = self.postmaster_pid()
        if pid is None:
            return
        self._run("pg_ctl", "stop", "--wait", "--mode", "immediate", "--pgdata", str(self.data))
        _wait_gone(pid)  # pg_ctl returns once postmaster.pid is gone, a little before that

    def _children(self, parent: int) -> list[int]:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited meanwhile
            if int(fields[1]) == parent:
                pids.append(int(stat.parent.name))
        return pids

    def stall(self) -> None:
        """SIGSTOP the postmaster, then its children (backends, checkpointer...):
        connects and queries hang until :meth:`resume`."""
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError("cannot stall a private PostgreSQL that is not running")
        os.kill(pid, signal.SIGSTOP)  # first: a stopped postmaster forks no new child
        self._stalled.append(pid)
        children = self._children(pid)
        _signal(children, signal.SIGSTOP)
        self._stalled.extend(children)

    def resume(self) -> None:
        """SIGCONT every process :meth:`stall` stopped."""
        pids, self._stalled = self._stalled, []
        _signal(pids, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and delete its folder."""
        try:
            with contextlib.suppress(RuntimeError):
                self.stop()
            pid = self.postmaster_pid()
            if pid is not None:  # pg_ctl failed: do not leave a server behind
                _signal([pid, *self._children(pid)], signal.SIGKILL)
                with contextlib.suppress(RuntimeError):
                    _wait_gone(pid)
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            _live.discard(self)


# --- a deployment on them -------------------------------------------------------------


@contextmanager
def private_deployment(
    redis: PrivateRedis | None, postgres: PrivatePostgres
) -> Iterator[Deployment]:
    """A :class:`~tests.servers.Deployment` on a fresh database of ``postgres`` and on
    ``redis`` (no ``REDIS_URL`` at all when None: the in-process bus), migrated and
    with the demo data.

    At exit a service the test left stalled is resumed (so that the servers can
    shut down rather than be killed after 10 s), every server is stopped, and what
    each wrote to stderr is printed (pytest shows it for a failed test). The
    database is left in the cluster, which goes away with ``postgres``.
    """
    name = postgres.create_database()
    extra = {"REDIS_URL": redis.url} if redis is not None else {}
    dep = Deployment(_base_env(DATABASE_URL=postgres.url(name), **extra))
    try:
        dep.manage("migrate", "--verbosity", "0")
        dep.manage("demo_data", "--quiet")
        yield dep
    finally:
        for service in (redis, postgres):
            if service is not None and service.stalled:
                service.resume()
        for log in dep.stop():
            print(f"--- server stderr ---\n{log}")
