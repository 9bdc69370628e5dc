"""A small protocol v1.1 client for a broker_ws stream (docs/protocol.md, "Writing a client").

It logs in over REST, keeps the account rows of its logins from a REST snapshot plus the
numbered account frames, prints the quotes of the symbols given, and survives dropped
connections (reconnect with back-off and resume), token expiry (in-band refresh) and dead
sockets (ping). Needs only `websockets`; REST goes through urllib.

Protocol v1.1 (all of it optional for a server, ignored by a v1.0 one): it offers the
subprotocol ``broker-ws.v1``; keeps each login's epoch from ``authorized`` and sends it as
``epochs`` beside ``resume``; takes a heartbeat ``["h", ts, {login: seq}]`` whose seq is
above its own for a missed frame (reconciled over REST) and no frame at all for 2.5
heartbeat intervals (``--heartbeat``, 15 s unless heartbeats show a shorter one) for a dead
connection (reconnects with resume); reconnects with resume at a random moment of a drain
notice's window; keeps instrument statuses ``["s", ...]`` and live account state
(``["e", login, null, ...]``); ``--max-rate R`` subscribes with ``"max_rate": R``.

    .venv/bin/python examples/client.py --url http://127.0.0.1:8000 \
        --user alice --password alice-demo-pass EURUSD "US 500"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import time
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import websockets
from websockets.typing import Subprotocol

NO_RECONNECT = {4001: "token refused", 4004: "access revoked", 4007: "too many sessions"}
RESTARTING = 4009  # the server drains for a deploy: reconnect at once, with resume
PING_EVERY, PONG_WITHIN = 20.0, 10.0
SUBPROTOCOL = Subprotocol("broker-ws.v1")
HEARTBEAT_ASSUMED = 15.0  # the server's HEARTBEAT_INTERVAL default; it cannot be asked for
HEARTBEAT_MIN = 1.0  # the server checks for idle sessions once a second
DEAD_AFTER = 2.5  # heartbeat intervals without any frame: the connection is dead


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


class LoginRefused(Exception):
    """The user name or password was refused."""


class Api:
    """The host's REST endpoints: simplejwt tokens and the account snapshot."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base, self.username, self.password = base.rstrip("/"), username, password
        self.access = self.refresh = ""

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if body is None:  # GET with the access token
            headers["Authorization"] = f"Bearer {self.access}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read(), parse_float=Decimal)  # exact decimals

    def login(self) -> None:
        try:
            body = {"username": self.username, "password": self.password}
            tokens = self._call("/api/token/", body)
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 401):
                raise LoginRefused(exc.code) from exc
            raise
        self.access, self.refresh = tokens["access"], tokens["refresh"]

    def refresh_access(self) -> None:
        try:
            tokens = self._call("/api/token/refresh/", {"refresh": self.refresh})
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
            return self.login()  # the refresh token has expired too
        self.access = tokens["access"]
        self.refresh = tokens.get("refresh", self.refresh)  # servers that rotate send a new one

    def access_expires(self) -> float:
        payload = self.access.split(".")[1]  # the JWT's claims, read without verifying
        return float(
            json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
        )

    def snapshot(self, login: str) -> Any:
        return self._call(f"/api/snapshot/?login={login}")


class Client:
    def __init__(
        self,
        api: Api,
        symbols: list[str],
        refresh_after: float | None,
        max_rate: float | None = None,
        heartbeat: float | None = None,
    ) -> None:
        self.api, self.symbols, self.refresh_after = api, symbols, refresh_after
        self.max_rate = max_rate
        self.seq: dict[str, int] = {}  # last account frame applied, per login
        self.epochs: dict[str, str] = {}  # the epoch of each login's numbering (v1.1)
        self.rows: dict[str, dict[tuple[str, Any], list[Any]]] = {}  # (marker, frame[3]) -> frame
        self.status: dict[str, str] = {}  # symbol -> instrument status (v1.1 "s")
        self.state: dict[tuple[str, str], list[Any]] = {}  # (login, marker) -> live state fields
        # The heartbeat interval: given, or learned from the heartbeats seen (the longest
        # silence before one, at least HEARTBEAT_MIN), else assumed.
        self.heartbeat, self.heartbeat_learned = heartbeat, 0.0
        self.last_frame = self.last_heartbeat = 0.0  # time.monotonic()
        self.backoff = 0.5
        self.leaving = 0.0  # set when we close on a reconnect notice: come back at once
        self.authorized, self.pong = False, asyncio.Event()  # per connection

    async def run(self) -> int:
        while True:
            code, not_before = None, 0.0
            try:
                if not self.api.access:
                    await asyncio.to_thread(self.api.login)
                code = await self.session()
            except LoginRefused as exc:
                log("login refused: HTTP", exc)
                return 1
            except websockets.InvalidStatus as exc:  # the handshake got an HTTP answer
                log("handshake refused: HTTP", exc.response.status_code)
                if exc.response.status_code == 403:  # wrong path or Origin: retrying won't help
                    return 1
                if exc.response.status_code == 429:  # too many connections from this address
                    retry_after = exc.response.headers.get("Retry-After", "1")
                    not_before = float(retry_after) if retry_after.isdigit() else 1.0
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                log("connection failed:", exc)  # HTTPError too: a 502 from a proxy
            if code in NO_RECONNECT:
                log(f"closed with {code} ({NO_RECONNECT[code]}): not reconnecting")
                return 1
            if code == RESTARTING or self.leaving:
                # The server is draining (a deploy): come back at once, spread over its window.
                delay = random.uniform(0, min(self.leaving or 1.0, 1.0))
                self.leaving = 0.0
            else:  # 4008 (a dependency of the server failed), 4002, 4005, 4006, 1xxx
                delay = random.uniform(self.backoff / 2, self.backoff)
                self.backoff = min(self.backoff * 2, 30.0)
            delay = max(delay, not_before)
            log(f"closed with {code}" if code else "no connection", f"- retry in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def session(self) -> int | None:
        if self.api.access_expires() - time.time() < 60:  # e.g. after close 4003
            await asyncio.to_thread(self.api.refresh_access)
        url = self.api.base.replace("http", "ws", 1) + "/"
        async with websockets.connect(
            url, open_timeout=10, close_timeout=2, subprotocols=[SUBPROTOCOL]
        ) as ws:
            hello: dict[str, Any] = {"authorization": self.api.access}
            if self.seq:
                hello["resume"] = dict(self.seq)
                # The epochs those seqs belong to: a login whose numbering was reset or
                # restored since (a database restore) is answered with resync.
                epochs = {login: self.epochs[login] for login in self.seq if login in self.epochs}
                if epochs:
                    hello["epochs"] = epochs
                log("resuming from", self.seq, "epochs", epochs)
            self.authorized, self.pong = False, asyncio.Event()
            self.last_frame = time.monotonic()
            tasks = [asyncio.create_task(self.keepalive(ws)), asyncio.create_task(self.watch(ws))]
            try:
                # A draining server may close (4009) before the hello is even sent.
                await ws.send(json.dumps(hello))
                async for text in ws:
                    await self.handle(ws, str(text), tasks)
            except websockets.ConnectionClosed:
                pass
            finally:
                for task in tasks:
                    task.cancel()
            return ws.close_code

    async def handle(self, ws: Any, text: str, tasks: list[asyncio.Task[None]]) -> None:
        now = time.monotonic()
        silence, self.last_frame = now - self.last_frame, now
        if text == "pong":
            self.pong.set()
            return
        message = json.loads(text, parse_float=Decimal)
        if isinstance(message, list):
            if message[0] == "h":
                return await self.on_heartbeat(message, silence)
            return await self.on_frame(message, text)
        event, data = message["event"], message["data"]
        if event == "authorized":
            await self.on_authorized(ws, data, tasks)
        elif event == "resync":  # the server's history does not reach back far enough
            log("resync", data)
            for login in data:
                await self.reconcile(login)
        elif event == "error":
            log("error", data["code"], data.get("symbols", data["message"]))
        elif event == "reconnect":  # the server process is going away (a deploy)
            within = data["within_ms"] / 1000
            log(f"server restarting: reconnecting within {within:.1f} s")
            tasks.append(asyncio.create_task(self.leave_later(ws, random.uniform(0, within))))
        else:  # subscribed, unsubscribed
            log(event, data)

    async def on_authorized(self, ws: Any, data: Any, tasks: list[asyncio.Task[None]]) -> None:
        expires_in = data["expires"] / 1000 - time.time()
        if self.authorized:
            log(f"token refreshed in-band; expires in {expires_in:.0f} s")
        else:
            self.authorized = True
            log(
                f"authorized as {data['user']}: logins {data['logins']}, seq {data['seq']},"
                f" epoch {data.get('epoch')}, protocol {data.get('protocol', '1.0')},"
                f" subprotocol {ws.subprotocol}"
            )
            # Only the first reply of a connection: seqs we reconcile from now on (after
            # a resync, say) belong to the numbering this one announces.
            self.epochs.update(data.get("epoch") or {})
            for login in data["logins"]:
                if login not in self.seq:  # a fresh start, or a login linked since
                    await self.reconcile(login)
            # Only now is the session good: a snapshot that fails (the database is
            # down) must not reset the back-off, or the client reconnects every 0.5 s.
            self.backoff = 0.5
            if self.symbols:
                subscribe: dict[str, Any] = {"event": "subscribe", "data": self.symbols}
                if self.max_rate:  # at most this many quotes per second of each symbol
                    subscribe["max_rate"] = self.max_rate
                await ws.send(json.dumps(subscribe))
        # Refresh one minute before expiry (or at 80 % of a short lifetime), same user, no resume.
        delay = self.refresh_after or max(expires_in - min(60.0, expires_in * 0.2), 0.0)
        tasks.append(asyncio.create_task(self.refresh_later(ws, delay)))

    async def leave_later(self, ws: Any, delay: float) -> None:
        """Close this connection after ``delay`` s and reconnect at once with resume."""
        await asyncio.sleep(delay)
        self.leaving = 0.1
        await ws.close()

    async def reconcile(self, login: str) -> None:
        body = await asyncio.to_thread(self.api.snapshot, login)
        self.seq[login] = body["seq"][login]  # frames up to this seq are in the snapshot
        self.rows[login] = {(frame[0], frame[3]): frame for frame in body["frames"]}
        for frame in body.get("state", []):  # the last live state published (v1.1)
            self.state.setdefault((frame[1], frame[0]), frame[3:])
        log(f"snapshot of {login}: seq {self.seq[login]}, {len(body['frames'])} rows")

    def heartbeat_interval(self) -> float:
        return self.heartbeat or self.heartbeat_learned or HEARTBEAT_ASSUMED

    async def on_heartbeat(self, frame: list[Any], silence: float) -> None:
        """``["h", ts_ms, {login: seq}]``: sent after the server's interval of silence."""
        self.last_heartbeat = time.monotonic()
        # The longest silence seen before a heartbeat bounds the interval from above.
        self.heartbeat_learned = max(self.heartbeat_learned, silence, HEARTBEAT_MIN)
        behind = {
            login: seq
            for login, seq in frame[2].items()
            if login in self.seq and seq > self.seq[login]
        }
        log(f"heartbeat, seq {frame[2]}" + (f": behind on {behind}" if behind else ""))
        for login in behind:  # the last frame of the login never reached us
            await self.reconcile(login)

    async def watch(self, ws: Any) -> None:
        """Close a connection that has received nothing for DEAD_AFTER heartbeat intervals."""
        while True:
            limit = DEAD_AFTER * self.heartbeat_interval()
            silent = time.monotonic() - self.last_frame
            if silent > limit:
                log(f"nothing received for {silent:.1f} s: reconnecting with resume")
                await ws.close()
                return
            await asyncio.sleep(min(limit - silent, 1.0) + 0.01)

    async def on_frame(self, frame: list[Any], text: str) -> None:
        if frame[0] == "t":
            return log(f"quote {frame[1]} {frame[2]}/{frame[3]}")
        if frame[0] == "s":  # instrument status: open, closed, halted, close_only, ...
            self.status[frame[1]] = frame[2]
            return log(f"status {frame[1]} {frame[2]}")
        login, seq = frame[1], frame[2]
        if login is None:  # a broadcast notification: no seq
            return log("notice to all:", frame[4])
        if seq is None:  # live state (the demo's "e"): no seq, the latest one is the state
            self.state[(login, frame[0])] = frame[3:]
            return log(f"state {frame[0]} {login} {frame[3:]}")
        last = self.seq.get(login)
        if last is None or seq <= last:
            return  # already applied, or included in a snapshot
        if seq > last + 1:
            log(f"gap on {login}: last {last}, got {seq}")
            await self.reconcile(login)
            if seq != self.seq[login] + 1:
                return
        self.seq[login] = seq
        if frame[0] != "n":  # b, o, a: full current values of one row
            self.rows.setdefault(login, {})[(frame[0], frame[3])] = frame
        log(text)

    async def keepalive(self, ws: Any) -> None:
        while True:
            await asyncio.sleep(PING_EVERY)
            self.pong.clear()
            await ws.send("ping")
            try:
                await asyncio.wait_for(self.pong.wait(), PONG_WITHIN)
            except TimeoutError:
                log("no pong: closing to reconnect")
                await ws.close()
                return

    async def refresh_later(self, ws: Any, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await asyncio.to_thread(self.api.refresh_access)
            await ws.send(json.dumps({"authorization": self.api.access}))
        except (OSError, websockets.ConnectionClosed) as exc:
            log("token refresh failed:", exc)  # the session lasts until close 4003


def main() -> int:
    parser = argparse.ArgumentParser(description="A protocol v1.1 client for broker_ws.")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the host's base URL")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", default=os.environ.get("BROKER_PASSWORD"))
    parser.add_argument("--refresh-after", type=float, help="refresh the token after S seconds")
    parser.add_argument(
        "--max-rate", type=float, help="at most R quotes per second of each symbol (mobile)"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        help="the server's HEARTBEAT_INTERVAL in s (default: 15, or what heartbeats show)",
    )
    parser.add_argument("symbols", nargs="*", help="symbols to subscribe to, exactly as named")
    args = parser.parse_args()
    if args.password is None:
        parser.error("--password or BROKER_PASSWORD is required")
    client = Client(
        Api(args.url, args.user, args.password),
        args.symbols,
        args.refresh_after,
        max_rate=args.max_rate,
        heartbeat=args.heartbeat,
    )
    try:
        return asyncio.run(client.run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
