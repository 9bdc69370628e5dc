"""Raw-asyncio WebSocket load generator for the fan-out benchmark.

One process drives many client sessions over plain TCP sockets
(``asyncio.Protocol``, uvloop when installed): it does the HTTP upgrade by
hand, masks the client frames as RFC 6455 requires, and parses the server's
unmasked frames with a few byte reads. Nothing here is shared with the
servers under test.

It is driven by ``bench/fanout.py`` over stdin/stdout, one line each::

    argv[1]  path of a JSON config: host, port (or ports), sessions [{auth, symbols}],
             concurrency, lat_path, start_at, steps
    stdout   READY {json}        every session answered (or failed)
    stdin    WINDOW t0 t1        the measurement window (publish time, epoch s)
    stdin    STOP deadline       drain until quiet (or deadline), then report
    stdout   RESULT {json}       counters; latencies go to lat_path (float64 ms)
    stdin    BYE                 close every session (close frame 1000) and exit

``ports`` (a list) spreads the sessions over several servers: session *j*
of this process connects to ``ports[j % len(ports)]`` (the scaling
scenario, several server processes behind one load). With ``"steps":
true`` the sessions stay connected after a RESULT: each further ``WINDOW``
starts a new measurement (the per-window counters are reset, the per-session
quote sequences are kept, so a gap across two windows still counts), until
``BYE``; the scaling scenario steps the quote rate up this way without a
connect storm per step.

Frames it understands (protocol v1 of broker_ws, which the baselines copy):

* ``["t", symbol, bid, ask, ts_ms]``: the benchmark's publishers put the
  quote's per-symbol sequence number in ``bid`` and the publish time in
  ``ask`` (epoch seconds, microsecond resolution): latency = receipt - ask.
* ``["b", login, seq, currency, balance, equity, margin, free_margin, updated_ms]``:
  the savers put the save time in ``equity`` (epoch ms with two decimals):
  latency = receipt - equity.
* control replies (``{"event": ...}``), ``pong``; pings are answered.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import sys
import time
from typing import Any

try:
    import orjson

    loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a broker_ws dependency
    loads = json.loads

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def mask_frame(opcode: int, data: bytes) -> bytes:
    """One FIN client frame with a random mask."""
    n = len(data)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if n:
        stream = (key * (n // 4 + 1))[:n]
        data = (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(
            n, "little"
        )
    return header + key + data


def take_upgrade_reply(buf: bytearray, key: bytes) -> str | None:
    """Take the server's reply to a WebSocket upgrade off the front of ``buf``.

    None while its head is not all in ``buf``; then "" when it is a 101 with the
    ``Sec-WebSocket-Accept`` that ``key`` calls for, or else its status line.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1")
    del buf[: end + 4]
    status = head.split("\r\n", 1)[0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    return "" if " 101 " in status and accept in head else status


class Stats:
    """Counters shared by all sessions of this process."""

    def __init__(self) -> None:
        self.t0 = float("inf")  # window, in publish time (epoch s)
        self.t1 = float("inf")
        self.lat = array.array("d")  # ms, frames published inside the window
        self.by_symbol: dict[str, int] = {}  # quote frames published in window, received
        self.account_in_window = 0
        self.arrivals_in_window = 0  # data frames received while now in [t0, t1)
        self.frames_total = 0
        self.last_data = 0.0
        self.lost = 0
        self.close_codes: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.dup = 0  # quote seq not above the last seen (duplicate or reordered)
        self.gaps = 0  # quote seq skipped one or more
        self.foreign = 0  # frames we did not ask for
        self.slow: list[tuple[float, float]] = []  # (receipt, latency ms), latency > 20 ms
        self.pings: list[float] = []  # when server pings arrived
        self.stopping = False

    def new_window(self) -> None:
        """Forget the previous window's counters (steps mode); sessions stay as they are."""
        self.t0 = self.t1 = float("inf")
        self.lat = array.array("d")
        self.by_symbol = {}
        self.account_in_window = 0
        self.arrivals_in_window = 0
        self.lost = 0
        self.close_codes = {}
        self.errors = {}
        self.dup = 0
        self.gaps = 0
        self.foreign = 0
        self.slow = []
        self.pings = []
        self.stopping = False


class Session(asyncio.Protocol):
    """One client session."""

    def __init__(self, gen: LoadGen, index: int, auth: str, symbols: list[str], port: int) -> None:
        self.gen = gen
        self.stats = gen.stats
        self.index = index
        self.port = port
        self.auth = auth
        self.symbols = symbols
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.key = base64.b64encode(os.urandom(16))
        self.ready: asyncio.Future[None] = gen.loop.create_future()
        self.is_ready = False
        self.closed = False
        self.fragments: list[bytes] | None = None
        self.last_seq: dict[str, float] = {}  # symbol -> last quote seq
        self.account: dict[str, list[int]] = {}  # login -> seqs received
        self.init_seq: dict[str, int] = {}
        self.failure: str | None = None

    # --- transport --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = self.gen.host, self.port
        transport.write(  # type: ignore[attr-defined]
            b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (host.encode(), port, self.key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if self.is_ready and not self.stats.stopping:
                self.stats.lost += 1
            reason = f"connection lost ({exc!r})" if exc else "connection closed"
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.failure = reason
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()

    def send_text(self, text: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(mask_frame(0x1, text.encode()))

    # --- parsing ----------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            refused = take_upgrade_reply(buf, self.key)
            if refused is None:
                return  # the reply's head is not all here yet
            if refused:
                self._fail("handshake refused: " + refused)
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            self.send_text(json.dumps({"authorization": self.auth}))
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            end = pos + hdr + length
            if end > n:
                break
            payload = bytes(buf[pos + hdr : end])
            pos = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == 0x0:  # continuation
                if self.fragments is None:
                    continue
                self.fragments.append(payload)
                if not fin:
                    continue
                payload = b"".join(self.fragments)
                self.fragments = None
                opcode = 0x1
            elif not fin and opcode in (0x1, 0x2):
                self.fragments = [payload]
                continue
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x9:  # ping
                if len(self.stats.pings) < 5000:
                    self.stats.pings.append(time.time())
                self.transport.write(mask_frame(0xA, payload))  # type: ignore[union-attr]
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                key = str(code)
                self.stats.close_codes[key] = self.stats.close_codes.get(key, 0) + 1
                if not self.closed:
                    self.closed = True
                    if self.is_ready and not self.stats.stopping:
                        self.stats.lost += 1
                    self._fail(f"closed by server with {code}")
                    with contextlib.suppress(Exception):
                        self.transport.write(mask_frame(0x8, payload[:2]))  # type: ignore[union-attr]
                    self.transport.close()  # type: ignore[union-attr]
            elif opcode == 0x2:
                self.stats.errors["binary frame"] = self.stats.errors.get("binary frame", 0) + 1
        if pos:
            del buf[:pos]

    def on_text(self, payload: bytes) -> None:
        stats = self.stats
        first = payload[:1]
        if first == b"[":
            now = time.time()
            stats.frames_total += 1
            stats.last_data = now
            if stats.t0 <= now < stats.t1:
                stats.arrivals_in_window += 1
            frame = loads(payload)
            marker = frame[0]
            if marker == "t":
                symbol = frame[1]
                if symbol not in self.last_seq and symbol not in self.symbols:
                    stats.foreign += 1
                    return
                seq = frame[2]
                sent = frame[3]
                last = self.last_seq.get(symbol)
                if last is not None:
                    if seq <= last:
                        stats.dup += 1
                    elif seq > last + 1:
                        stats.gaps += 1
                self.last_seq[symbol] = seq
                if stats.t0 <= sent < stats.t1:
                    ms = (now - sent) * 1000.0
                    stats.lat.append(ms)
                    if ms > 20.0 and len(stats.slow) < 2000:
                        stats.slow.append((now, ms))
                    stats.by_symbol[symbol] = stats.by_symbol.get(symbol, 0) + 1
            elif marker in ("b", "o", "a", "n"):
                login = frame[1]
                if login is None:
                    return
                seqs = self.account.get(login)
                if seqs is None:
                    stats.foreign += 1
                    return
                seqs.append(frame[2])
                if marker == "b":
                    saved_ms = float(frame[5])
                    if stats.t0 * 1000.0 <= saved_ms < stats.t1 * 1000.0:
                        stats.lat.append(now * 1000.0 - saved_ms)
                        stats.account_in_window += 1
            return
        if first == b"{":
            message = loads(payload)
            event = message.get("event")
            data = message.get("data")
            if event == "authorized":
                seq = (data or {}).get("seq") or {}
                for login in (data or {}).get("logins") or []:
                    self.account.setdefault(str(login), [])
                    self.init_seq[str(login)] = int(seq.get(login, 0))
                if self.symbols:
                    self.send_text(json.dumps({"event": "subscribe", "data": self.symbols}))
                else:
                    self._ready()
            elif event == "subscribed":
                self._ready()
            elif event == "error":
                code = str((data or {}).get("code"))
                stats.errors[code] = stats.errors.get(code, 0) + 1
            return
        # "pong" and anything else: ignored

    def _ready(self) -> None:
        if not self.ready.done():
            self.is_ready = True
            self.ready.set_result(None)


class LoadGen:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.host = config["host"]
        self.ports = [int(p) for p in config.get("ports") or [config["port"]]]
        self.loop = asyncio.get_running_loop()
        self.stats = Stats()
        self.sessions = [
            Session(
                self, i, s["auth"], list(s.get("symbols") or []), self.ports[i % len(self.ports)]
            )
            for i, s in enumerate(config["sessions"])
        ]
        self.cpu_marks: dict[str, float] = {}
        self.quiet = False  # the last drain ended because no frame came for a while

    def mark_cpu(self, name: str) -> None:
        t = os.times()
        self.cpu_marks[name] = t.user + t.system
        self.cpu_marks[name + "_wall"] = time.time()

    async def connect_all(self) -> dict[str, Any]:
        sem = asyncio.Semaphore(int(self.config.get("concurrency", 500)))
        timeout = float(self.config.get("connect_timeout", 60.0))

        async def one(session: Session) -> None:
            async with sem:
                try:
                    await asyncio.wait_for(
                        self.loop.create_connection(lambda: session, self.host, session.port),
                        timeout,
                    )
                    await asyncio.wait_for(asyncio.shield(session.ready), timeout)
                except Exception as exc:
                    if session.failure is None:
                        session.failure = repr(exc)
                    if session.transport is not None:
                        session.transport.close()

        start_at = float(self.config.get("start_at") or time.time())
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.mark_cpu("connect_start")
        started = time.time()
        await asyncio.gather(*(one(s) for s in self.sessions))
        done = time.time()
        self.mark_cpu("connect_end")
        failures: dict[str, int] = {}
        by_port: dict[str, int] = {}
        for s in self.sessions:
            if not s.is_ready:
                failures[s.failure or "?"] = failures.get(s.failure or "?", 0) + 1
            else:
                by_port[str(s.port)] = by_port.get(str(s.port), 0) + 1
        return {
            "ready": sum(1 for s in self.sessions if s.is_ready),
            "by_port": by_port,
            "failed": sum(failures.values()),
            "failures": failures,
            "started": started,
            "done": done,
            "connect_s": done - started,
            "cpu_connect_s": self.cpu_marks["connect_end"] - self.cpu_marks["connect_start"],
        }

    def set_window(self, t0: float, t1: float) -> None:
        if self.config.get("steps"):
            self.stats.new_window()
            for name in ("w0", "w0_wall", "w1", "w1_wall"):
                self.cpu_marks.pop(name, None)
        self.stats.t0, self.stats.t1 = t0, t1
        self.loop.call_later(max(t0 - time.time(), 0), self.mark_cpu, "w0")
        self.loop.call_later(max(t1 - time.time(), 0), self.mark_cpu, "w1")

    async def drain(self, deadline: float, quiet: float = 0.7) -> None:
        self.quiet = False
        while time.time() < deadline:
            if time.time() - max(self.stats.last_data, self.stats.t1) >= quiet:
                self.quiet = True
                break
            await asyncio.sleep(0.1)
        self.stats.stopping = True

    def result(self) -> dict[str, Any]:
        st = self.stats
        with open(self.config["lat_path"], "wb") as fh:
            st.lat.tofile(fh)
        sessions_alive = sum(1 for s in self.sessions if s.is_ready and not s.closed)
        window_cpu = None
        if "w0" in self.cpu_marks and "w1" in self.cpu_marks:
            wall = self.cpu_marks["w1_wall"] - self.cpu_marks["w0_wall"]
            window_cpu = {
                "cpu_s": self.cpu_marks["w1"] - self.cpu_marks["w0"],
                "wall_s": wall,
            }
        # Per symbol: how many ready sessions are subscribed (for the expected count).
        subscribers: dict[str, int] = {}
        for s in self.sessions:
            if s.is_ready:
                for sym in s.symbols:
                    subscribers[sym] = subscribers.get(sym, 0) + 1
        account = [
            {"login": login, "init": s.init_seq.get(login, 0), "seqs": seqs}
            for s in self.sessions
            if s.is_ready
            for login, seqs in s.account.items()
        ]
        return {
            "latencies": len(st.lat),
            "by_symbol": st.by_symbol,
            "subscribers": subscribers,
            "account_in_window": st.account_in_window,
            "arrivals_in_window": st.arrivals_in_window,
            "frames_total": st.frames_total,
            "lost": st.lost,
            "alive": sessions_alive,
            "close_codes": st.close_codes,
            "errors": st.errors,
            "dup": st.dup,
            "gaps": st.gaps,
            "foreign": st.foreign,
            "window_cpu": window_cpu,
            "slow": st.slow,
            "pings": st.pings,
            "cpu_total_s": sum(os.times()[:2]),
            "account": account,
            "quiet": self.quiet,
        }


async def main(config_path: str) -> None:
    with open(config_path) as fh:
        config = json.load(fh)
    gen = LoadGen(config)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    ready = await gen.connect_all()
    print("READY " + json.dumps(ready), flush=True)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            break  # orchestrator went away
        cmd, *args = line.split()
        if cmd == "WINDOW":
            gen.set_window(float(args[0]), float(args[1]))
        elif cmd == "STOP":
            await gen.drain(float(args[0]))
            print("RESULT " + json.dumps(gen.result()), flush=True)
            if not config.get("steps"):
                await reader.readline()  # BYE (or EOF): then close the sessions
                break
        elif cmd == "BYE":
            break
    # Close politely (close frame 1000, then FIN) so servers log no errors.
    for s in gen.sessions:
        if s.transport is not None and not s.closed:
            s.closed = True
            s.transport.write(mask_frame(0x8, (1000).to_bytes(2, "big")))
            if s.transport.can_write_eof():
                s.transport.write_eof()
    await asyncio.sleep(0.5)
    for s in gen.sessions:
        if s.transport is not None:
            s.transport.close()
    await asyncio.sleep(0.05)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(sys.argv[1]))
    else:
        uvloop.run(main(sys.argv[1]))
