// broker_ws live page: the reference browser client of protocol v1.1 (docs/protocol.md).
//
// Plain JavaScript with no build step and no dependencies. The index view inlines this
// file into the page, so it must never contain a closing script tag.
//
// What it does, in the order a client has to do it:
//   1. log in over REST (POST /api/token/), keep both tokens in memory only;
//   2. open the WebSocket at "/" and send {"authorization": ...} first (with "resume"
//      after a reconnect), then subscribe to the quote board's symbols;
//   3. keep a last-seen seq per login, seed each login's state from GET /api/snapshot/,
//      apply account frames strictly in seq order, reconcile over REST on a gap or a
//      "resync";
//   4. refresh the access token before it expires and hand it over in-band;
//   5. reconnect with back-off, except where the close code says it is pointless;
//   6. (v1.1) offer the subprotocol "broker-ws.v1"; keep each login's epoch from
//      "authorized" and send it as "epochs" beside "resume"; watch the heartbeats
//      ["h", ts, {login: seq}]: no frame at all for 2.5 heartbeat intervals is a dead
//      connection, a seq above ours is a missed frame (reconciled over REST); on a
//      drain notice reconnect, with resume, at a random moment of its window; show
//      instrument status ["s", ...] and live equity ["e", login, null, ...]; re-subscribe
//      with "max_rate": 1 in mobile mode.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("config").textContent);
  // ?symbols=A,B overrides the board, for a feed started with `rundemo --symbols`.
  const symbolsParam = new URLSearchParams(location.search).get("symbols");
  const SYMBOLS = symbolsParam ? symbolsParam.split(",").filter(Boolean) : config.symbols;
  const WS_URL = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/`;

  const LOG_LINES = 200;
  const NOTIFICATIONS = 50;
  // The protocol asks for a text ping every 20-30 s: browsers cannot send protocol
  // pings, and a half-open TCP connection would otherwise look alive for minutes.
  const PING_EVERY_MS = 25_000;
  const PONG_WITHIN_MS = 10_000;
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 30_000;
  const RETRY_MS = 5_000;
  const SUBPROTOCOL = "broker-ws.v1";
  // The server sends ["h", ...] to a session it has sent nothing for HEARTBEAT_INTERVAL
  // (a server setting, 15 s by default). The page cannot ask for it: it assumes 15 s
  // until it has seen heartbeats, then uses the longest silence it saw before one (at
  // least 1 s: the server checks once a second). No frame at all (quotes, replies,
  // pongs, heartbeats) for DEAD_AFTER intervals means the connection is dead.
  const HEARTBEAT_ASSUMED_MS = 15_000;
  const HEARTBEAT_MIN_MS = 1_000;
  const DEAD_AFTER = 2.5;
  const WATCH_EVERY_MS = 250;
  const MOBILE_MAX_RATE = 1; // quotes per second per symbol in mobile mode

  const CLOSE_NAMES = {
    1000: "normal",
    1001: "going away",
    1006: "connection lost",
    1009: "message too big",
    1011: "server error",
    1012: "service restart", // uvicorn on shutdown
    4001: "auth failed",
    4002: "auth timeout",
    4003: "token expired",
    4004: "revoked",
    4005: "too slow",
    4006: "rate limited",
    4007: "too many sessions",
    4008: "server unavailable",
    4009: "server restarting",
  };

  const $ = (selector) => document.querySelector(selector);

  const session = {
    access: null,
    refresh: null,
    refreshTimer: null,
    refreshing: null, // the refresh in flight, shared by everyone who needs a new token
    socket: null,
    authorized: false, // on the current socket
    authFailures: 0, // 4001 closes since the last successful authorization
    attempt: 0, // reconnects since the last successful authorization
    reconnectTimer: null,
    pingTimer: null,
    pongTimer: null,
    // Bumped whenever the socket goes away. A snapshot fetched for an older socket is
    // dropped: the next connection's "resume" (or a fresh reconcile) covers that login.
    epoch: 0,
    lastSeq: new Map(), // login -> seq of the last account frame applied
    // login -> epoch of its numbering, from the last "authorized" (not to be confused
    // with session.epoch above, which counts sockets).
    epochs: new Map(),
    watchTimer: null,
    leaveTimer: null, // the reconnect a drain notice asked for
    lastFrameAt: 0, // Date.now() of the last message of any kind on this socket
    lastHeartbeatAt: 0,
    heartbeatMs: null, // learned from the heartbeats seen; null: HEARTBEAT_ASSUMED_MS
    mobile: false, // quotes subscribed with "max_rate"
    syncing: new Map(), // login -> frames held back while its snapshot is being fetched
  };

  // ---------------------------------------------------------------- parsing, formatting

  // JSON.parse reads 10250.00 as 10250 and 1.084250 as 1.08425. The protocol sends
  // decimals with exactly their digits, so keep the source text of every non-integer
  // number (money, prices) as a string; integers (seq, timestamps, ids) stay numbers.
  // Browsers without JSON.parse source text access fall back to plain numbers.
  function parseExact(text) {
    return JSON.parse(text, (key, value, context) =>
      typeof value === "number" && context && /[.eE]/.test(context.source)
        ? context.source
        : value,
    );
  }

  const pad = (n, width = 2) => String(n).padStart(width, "0");

  function clock(ms, withMillis = false) {
    const d = new Date(ms);
    const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMillis ? `${hms}.${pad(d.getMilliseconds(), 3)}` : hms;
  }

  const decimals = (value) => (String(value).split(".")[1] || "").length;
  const text = (value) => (value === null || value === undefined ? "—" : String(value));

  class HttpError extends Error {
    constructor(status, detail) {
      super(`HTTP ${status}${detail ? `: ${detail}` : ""}`);
      this.status = status;
    }
  }

  // ---------------------------------------------------------------- REST

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new HttpError(response.status, data.detail);
    return data;
  }

  async function fetchSnapshot(login) {
    const url = `${config.snapshotUrl}?login=${encodeURIComponent(login)}`;
    for (let attempt = 0; ; attempt++) {
      const response = await fetch(url, {
        headers: { Authorization: `Bearer ${session.access}` },
      });
      // The access token may have expired since the last refresh (a sleeping laptop).
      if (response.status === 401 && attempt === 0 && (await refreshAccess())) continue;
      if (!response.ok) throw new HttpError(response.status);
      return parseExact(await response.text());
    }
  }

  // ---------------------------------------------------------------- tokens

  function tokenLifetimeMs(jwt) {
    // Decoded only to time the refresh; validating it is the server's business.
    const payload = JSON.parse(atob(jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return (payload.exp - (payload.iat ?? Date.now() / 1000)) * 1000;
  }

  function scheduleRefresh() {
    clearTimeout(session.refreshTimer);
    // 80 % of the lifetime, counted from now rather than from the token's own "exp", so
    // a browser clock that is off does not matter; the rest covers the REST round trip.
    const delay = Math.max(1000, 0.8 * tokenLifetimeMs(session.access));
    session.refreshTimer = setTimeout(refreshAccess, delay);
    $("#token").textContent = `token refresh at ${clock(Date.now() + delay)}`;
  }

  function refreshAccess() {
    session.refreshing ??= doRefresh().finally(() => {
      session.refreshing = null;
    });
    return session.refreshing;
  }

  async function doRefresh() {
    if (!session.refresh) return false;
    clearTimeout(session.refreshTimer);
    try {
      const data = await postJson(config.refreshUrl, { refresh: session.refresh });
      if (!session.refresh) return false; // logged out meanwhile
      session.access = data.access;
      if (data.refresh) session.refresh = data.refresh; // deployments that rotate them
      scheduleRefresh();
      note("access token refreshed");
      // In-band refresh: same user, no "resume" (we would get our frames twice). The
      // seq in the "authorized" it answers is informational; ours stay as they are.
      if (session.authorized) send({ authorization: session.access });
      return true;
    } catch (error) {
      if (error.status === 401) {
        logout("closed", "session ended: log in again");
        return false;
      }
      note(`token refresh failed (${error.message}), retrying`);
      session.refreshTimer = setTimeout(refreshAccess, RETRY_MS);
      return false;
    }
  }

  // ---------------------------------------------------------------- the socket

  function connect() {
    clearTimeout(session.reconnectTimer);
    dropSocket();
    session.epoch++;
    session.syncing.clear();
    setState("connecting", `connecting to ${WS_URL}`);
    // A v1.1 server echoes the subprotocol; the handshake fails on a server that does not.
    const socket = new WebSocket(WS_URL, [SUBPROTOCOL]);
    session.socket = socket;
    // Events of a socket we have already given up on must not touch the page.
    socket.onopen = () => socket === session.socket && onOpen();
    socket.onmessage = (event) => socket === session.socket && onMessage(event.data);
    socket.onclose = (event) => socket === session.socket && onClosed(event.code);
  }

  function onOpen() {
    // The authorization must come first (the server closes with 4002 after 10 s). After
    // a reconnect, "resume" asks for the account frames missed since the last seq seen.
    const resume = Object.fromEntries(session.lastSeq);
    const message = { authorization: session.access };
    if (session.lastSeq.size) {
      message.resume = resume;
      // The epochs our seqs belong to: a login whose numbering was reset or restored
      // since (a database restore) gets "resync" whatever its seq says.
      const epochs = [...session.lastSeq.keys()].filter((login) => session.epochs.has(login));
      if (epochs.length) {
        message.epochs = Object.fromEntries(epochs.map((login) => [login, session.epochs.get(login)]));
      }
    }
    send(message);
    startKeepalive();
  }

  function send(message) {
    const raw = typeof message === "string" ? message : JSON.stringify(message);
    session.socket.send(raw);
    logLine("→", message.authorization ? redact(message) : raw);
  }

  function redact(message) {
    return JSON.stringify({ ...message, authorization: `${message.authorization.slice(0, 12)}…` });
  }

  function startKeepalive() {
    session.lastFrameAt = Date.now();
    session.watchTimer = setInterval(watch, WATCH_EVERY_MS);
    session.pingTimer = setInterval(() => {
      send("ping");
      clearTimeout(session.pongTimer);
      session.pongTimer = setTimeout(() => {
        // A dead link would keep the browser waiting for the closing handshake: give up
        // on the socket now and treat it as lost.
        dropSocket();
        onClosed(1006, "no pong");
      }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  const heartbeatMs = () => session.heartbeatMs ?? HEARTBEAT_ASSUMED_MS;

  // The heartbeat age in the header, and the dead-connection check.
  function watch() {
    const now = Date.now();
    const element = $("#heartbeat");
    const every = `every ${(heartbeatMs() / 1000).toFixed(1)} s${session.heartbeatMs ? "" : " (assumed)"}`;
    if (session.lastHeartbeatAt) {
      const age = (now - session.lastHeartbeatAt) / 1000;
      element.textContent = `heartbeat ${age.toFixed(1)} s ago, ${every}`;
      element.dataset.age = String(Math.round(age * 1000));
    } else {
      element.textContent = `no heartbeat yet, ${every}`;
    }
    const silent = now - session.lastFrameAt;
    if (silent > DEAD_AFTER * heartbeatMs()) {
      // A half-open connection: the browser would wait minutes for TCP to notice.
      dropSocket();
      onClosed(1006, `nothing received for ${(silent / 1000).toFixed(1)} s`);
    }
  }

  function dropSocket() {
    clearInterval(session.pingTimer);
    clearTimeout(session.pongTimer);
    clearInterval(session.watchTimer);
    clearTimeout(session.leaveTimer);
    const socket = session.socket;
    session.socket = null;
    session.authorized = false;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000);
  }

  function onClosed(code, why) {
    dropSocket();
    session.epoch++;
    session.syncing.clear();
    if (!session.access) return; // we closed it ourselves, on logout
    const label = `closed ${code} ${why || CLOSE_NAMES[code] || ""}`.trim();
    note(label);
    switch (code) {
      case 4004: // revoked: every token issued before is refused from now on
        logout("closed", `${label}: log in again`);
        return;
      case 4007: // another session of a login has to go first; retrying cannot help
        setState("closed", `${label}: close another session, then reconnect`);
        $("#reconnect").hidden = false;
        return;
      case 4001: // the token was refused; 4003: it expired. Either way, get a new one.
      case 4003:
        if (code === 4001 && session.authFailures++ > 0) {
          logout("closed", `${label}: log in again`);
          return;
        }
        setState("reconnecting", `${label}, getting a new token`);
        // A network failure leaves the old token: reconnecting shows whether it still works.
        refreshAccess().then(() => session.access && scheduleReconnect(label));
        return;
      case 4009: // the server drains for a deploy: come back at once (spread), with resume
        setState("reconnecting", `${label}, reconnecting`);
        session.reconnectTimer = setTimeout(connect, Math.random() * 1000);
        return;
      default: // 4002, 4005, 4006, 4008, 1xxx: reconnect with back-off, then resume
        scheduleReconnect(label);
    }
  }

  function scheduleReconnect(label) {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** session.attempt++);
    // Jitter spreads the reconnects of every client of a restarted server.
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    setState("reconnecting", `${label}, reconnecting in ${(delay / 1000).toFixed(1)} s`);
    session.reconnectTimer = setTimeout(connect, delay);
  }

  // ---------------------------------------------------------------- messages

  function onMessage(raw) {
    const previous = session.lastFrameAt;
    session.lastFrameAt = Date.now();
    logLine("←", raw);
    if (raw.startsWith('["h",')) {
      onHeartbeat(parseExact(raw), session.lastFrameAt - previous);
      return;
    }
    // The first character tells the kinds apart: "{" control reply, "[" data frame,
    // and "pong" is the only plain text.
    if (raw === "pong") {
      clearTimeout(session.pongTimer);
      return;
    }
    if (raw[0] === "[") onFrame(parseExact(raw));
    else if (raw[0] === "{") onReply(parseExact(raw));
  }

  function onReply({ event, data }) {
    switch (event) {
      case "authorized":
        onAuthorized(data);
        break;
      case "resync": // the history did not reach back: reconcile these logins over REST
        for (const login of Object.keys(data)) reconcile(login, "resync");
        break;
      case "subscribed":
        for (const symbol of data) quoteRow(symbol)?.setAttribute("data-subscribed", "");
        break;
      case "reconnect": // the server is going away: it closes with 4009 within the window
        onDrainNotice(data.within_ms);
        break;
      case "error":
        onError(data);
        break;
      // "unsubscribed" and replies this client does not know need nothing.
    }
  }

  function onAuthorized(data) {
    $("#expires").textContent = `token expires ${clock(data.expires)}`;
    if (session.authorized) return; // an in-band refresh: nothing else changes
    session.authorized = true;
    session.attempt = 0;
    session.authFailures = 0;
    $("#who-logins").textContent = data.logins.join(", ") || "none";
    $("#protocol").textContent = data.protocol ? `protocol ${data.protocol}` : "protocol 1.0";
    // The epochs of this connection's numbering (v1.1); seqs we hold from a "resync"
    // reconcile are in these too, since the snapshot is read after this reply.
    for (const [login, epoch] of Object.entries(data.epoch || {})) session.epochs.set(login, epoch);
    setState("authorized", `authorized as ${data.user}`);
    // Logins we have no seq for (a fresh start) are seeded from REST. Frames that
    // arrive meanwhile are held back and applied after the snapshot's seq.
    for (const login of data.logins) {
      if (!session.lastSeq.has(login)) reconcile(login, "initial state");
    }
    subscribeQuotes();
  }

  function subscribeQuotes() {
    const message = { event: "subscribe", data: SYMBOLS };
    if (session.mobile) message.max_rate = MOBILE_MAX_RATE;
    send(message);
  }

  // Mobile mode: the latest quote of each symbol at most once a second. A subscribe
  // sets the rate of the symbols it names, so unsubscribe first and subscribe again.
  function toggleMobile() {
    session.mobile = !session.mobile;
    const button = $("#mobile");
    button.setAttribute("aria-pressed", String(session.mobile));
    document.body.dataset.mobile = String(session.mobile);
    $("#quote-rate").textContent = session.mobile ? `≤ ${MOBILE_MAX_RATE} quote/s per symbol` : "";
    if (!session.authorized) return; // the next "authorized" subscribes with the new rate
    send({ event: "unsubscribe", data: SYMBOLS });
    subscribeQuotes();
  }

  function onHeartbeat([, ts, seqs], silentMs) {
    session.lastHeartbeatAt = Date.now();
    // The server sent it after at least its interval of silence: the longest silence
    // seen before a heartbeat bounds the interval from above, which is the safe side.
    const seen = Math.max(HEARTBEAT_MIN_MS, silentMs);
    session.heartbeatMs = Math.max(session.heartbeatMs ?? 0, seen);
    watch();
    // The seq of the last frame of each login the server has sent us: above ours, a
    // frame went missing (today's v1 client would only notice at the next one).
    for (const [login, seq] of Object.entries(seqs || {})) {
      const last = session.lastSeq.get(login);
      if (last === undefined || session.syncing.has(login) || seq <= last) continue;
      note(`heartbeat of ${clock(ts)}: ${login} is at seq ${seq}, we have ${last}`);
      reconcile(login, "heartbeat");
    }
  }

  function onDrainNotice(withinMs) {
    // Reconnect (with resume) at a random moment of the window, so that the clients of
    // the process do not all come back at once; the server closes with 4009 within it
    // anyway, and whichever comes first wins.
    const delay = Math.random() * withinMs;
    note(`server restarting: reconnecting in ${(delay / 1000).toFixed(1)} s (within ${(withinMs / 1000).toFixed(1)} s)`);
    setState("draining", `server restarting, reconnecting in ${(delay / 1000).toFixed(1)} s`);
    $("#drains").textContent = String(Number($("#drains").textContent || "0") + 1);
    clearTimeout(session.leaveTimer);
    session.leaveTimer = setTimeout(() => {
      note("reconnecting with resume (drain notice)");
      connect();
    }, delay);
  }

  function onError({ code, message, symbols }) {
    showError(`${code}: ${message}`);
    if (code === "invalid_symbols" || code === "too_many_subscriptions") {
      for (const symbol of symbols || []) quoteRow(symbol)?.setAttribute("data-refused", "");
    } else if (code === "auth_failed" && session.authorized) {
      // A refused refresh leaves the session running until the old token expires.
      session.refreshTimer = setTimeout(refreshAccess, RETRY_MS);
    }
    // auth_failed on the first authorization is followed by close 4001: see onClosed.
  }

  function onFrame(frame) {
    switch (frame[0]) {
      case "t":
        renderQuote(frame);
        break;
      case "s":
        renderStatus(frame);
        break;
      case "e": // live state: no seq, never replayed, the latest one wins
        renderEquity(frame);
        break;
      case "b":
      case "o":
      case "a":
        onAccountFrame(frame);
        break;
      case "n": // for one login it is numbered like the account frames; broadcasts are not
        if (frame[1] === null) renderNotification(frame);
        else onAccountFrame(frame);
        break;
      // Unknown markers are ignored, as the protocol asks.
    }
  }

  // ---------------------------------------------------------------- seq and reconciling

  function onAccountFrame(frame) {
    const [, login, seq] = frame;
    const held = session.syncing.get(login);
    if (held) {
      held.push(frame);
      return;
    }
    const last = session.lastSeq.get(login);
    if (last === undefined || seq <= last) return; // not one of ours, or already applied
    if (seq > last + 1) {
      note(`gap on ${login}: seq ${last} then ${seq}`);
      reconcile(login, "gap");
      session.syncing.get(login).push(frame);
      return;
    }
    setLastSeq(login, seq);
    applyAccountFrame(frame);
  }

  async function reconcile(login, reason) {
    if (session.syncing.has(login)) return; // one fetch at a time; frames are held
    const epoch = session.epoch;
    session.syncing.set(login, []);
    note(`GET ${config.snapshotUrl}?login=${login} (${reason})`);
    let snapshot;
    try {
      snapshot = await fetchSnapshot(login);
    } catch (error) {
      if (epoch !== session.epoch) return;
      session.syncing.delete(login);
      if (error.status === 404) {
        forgetLogin(login); // no longer linked to this user
        return;
      }
      note(`snapshot of ${login} failed (${error.message}), retrying`);
      setTimeout(() => epoch === session.epoch && reconcile(login, reason), RETRY_MS);
      return;
    }
    if (epoch !== session.epoch) return;
    const held = session.syncing.get(login);
    session.syncing.delete(login);
    // The snapshot replaces everything we knew of the login, and its seq is where the
    // stream continues; frames held meanwhile up to that seq are already in it.
    clearLogin(login);
    for (const frame of snapshot.frames) applyAccountFrame(frame);
    // The last live state published (v1.1), unless a live frame has shown a newer one.
    for (const frame of snapshot.state || []) {
      if (frame[0] === "e" && !document.getElementById(`equity-${frame[1]}`)) renderEquity(frame);
    }
    setLastSeq(login, snapshot.seq[login]);
    held.sort((a, b) => a[2] - b[2]).forEach(onAccountFrame);
  }

  function setLastSeq(login, seq) {
    session.lastSeq.set(login, seq);
    const cell = document.querySelector(`#balance-${CSS.escape(login)} .seq`);
    if (cell) cell.textContent = seq;
  }

  function forgetLogin(login) {
    session.lastSeq.delete(login);
    session.epochs.delete(login);
    clearLogin(login);
    document.getElementById(`equity-${login}`)?.remove();
  }

  // ---------------------------------------------------------------- rendering

  function setState(state, detail) {
    const element = $("#state");
    element.dataset.state = state;
    element.textContent = detail || state;
    $("#reconnect").hidden = true;
  }

  function showError(message) {
    $("#last-error").textContent = message;
  }

  function quoteRow(symbol) {
    return document.querySelector(`#quotes tr[data-symbol="${CSS.escape(symbol)}"]`);
  }

  const quoteState = new Map(); // symbol -> { bid, places }

  function renderQuote([, symbol, bid, ask, ts]) {
    const row = quoteRow(symbol);
    if (!row) return;
    const state = quoteState.get(symbol) || { bid: null, places: 0 };
    // Prices are floats, so 1.08500 arrives as 1.085: pad to the most decimals this
    // symbol has shown, which keeps the column from jittering.
    state.places = Math.max(state.places, decimals(bid), decimals(ask));
    const value = Number(bid);
    if (state.bid !== null && value !== state.bid) {
      row.dataset.dir = value > state.bid ? "up" : "down";
      row.querySelector(".dir").textContent = value > state.bid ? "▲" : "▼";
    }
    state.bid = value;
    quoteState.set(symbol, state);
    row.querySelector(".bid").textContent = value.toFixed(state.places);
    row.querySelector(".ask").textContent = Number(ask).toFixed(state.places);
    row.querySelector(".time").textContent = clock(ts, true);
  }

  // ["s", symbol, status, ts]: open, closed, halted, close_only, or a status of the
  // host's own. It follows the symbol's last quote on subscribe, and quotes in order.
  function renderStatus([, symbol, status, ts]) {
    const row = quoteRow(symbol);
    if (!row) return;
    row.dataset.status = status;
    const cell = row.querySelector(".status");
    cell.textContent = status.replace(/_/g, " ");
    cell.title = `since ${clock(ts, true)}`;
  }

  const EQUITY_COLUMNS = [
    "login", "equity", "margin", "free-margin", "margin-level", "floating-pl", "updated",
  ];
  const equityState = new Map(); // login -> last equity, for the direction arrow

  // ["e", login, null, equity, margin, free_margin, margin_level, floating_pl]: the
  // demo's live account state. It moves with every quote and is never stored: no seq,
  // no gap check, a resume does not replay it; the latest frame is the state.
  function renderEquity([, login, , equity, margin, freeMargin, marginLevel, floatingPl]) {
    const id = `equity-${login}`;
    let row = document.getElementById(id);
    if (!row) {
      row = document.createElement("tr");
      row.id = id;
      row.dataset.login = login;
      for (const column of EQUITY_COLUMNS) {
        const cell = document.createElement("td");
        cell.className = column;
        row.append(cell);
      }
      const body = $("#equity tbody");
      const after = [...body.rows].find((other) => other.dataset.login > login);
      body.insertBefore(row, after || null);
    }
    const value = Number(equity);
    const before = equityState.get(login);
    if (before !== undefined && value !== before) row.dataset.dir = value > before ? "up" : "down";
    equityState.set(login, value);
    row.dataset.sign = Number(floatingPl) < 0 ? "negative" : "positive";
    row.dataset.updates = String(Number(row.dataset.updates || "0") + 1);
    fill(row, {
      login,
      equity,
      margin,
      "free-margin": freeMargin,
      "margin-level": marginLevel === null || marginLevel === undefined ? null : `${marginLevel} %`,
      "floating-pl": floatingPl,
      updated: clock(Date.now(), true),
    });
  }

  function applyAccountFrame(frame) {
    switch (frame[0]) {
      case "b":
        renderBalance(frame);
        break;
      case "o":
        renderTrade(frame);
        break;
      case "a":
        renderAlert(frame);
        break;
      case "n":
        renderNotification(frame);
        break;
    }
  }

  // One row per key, kept sorted; cells are addressed by class so the layout in
  // docs/protocol.md maps onto the page in one place (the render functions below).
  function upsertRow(tableId, id, login, sortKey, columns) {
    const body = document.querySelector(`#${tableId} tbody`);
    let row = document.getElementById(id);
    if (!row) {
      row = document.createElement("tr");
      row.id = id;
      row.dataset.login = login;
      row.dataset.sort = sortKey;
      for (const column of columns) {
        const cell = document.createElement("td");
        cell.className = column;
        row.append(cell);
      }
      const after = [...body.rows].find((other) => other.dataset.sort > sortKey);
      body.insertBefore(row, after || null);
    }
    // Restart the highlight animation, which a class toggle alone would not do.
    row.classList.remove("flash");
    void row.offsetWidth;
    row.classList.add("flash");
    return row;
  }

  function fill(row, values) {
    // textContent only: every value comes from the server and is never parsed as HTML.
    for (const [column, value] of Object.entries(values)) {
      row.querySelector(`.${column}`).textContent = text(value);
    }
  }

  const BALANCE_COLUMNS = [
    "login", "currency", "balance", "equity", "margin", "free-margin", "updated", "seq",
  ];

  function renderBalance([, login, , currency, balance, equity, margin, freeMargin, updatedAt]) {
    const row = upsertRow("balances", `balance-${login}`, login, login, BALANCE_COLUMNS);
    fill(row, {
      login,
      currency,
      balance,
      equity,
      margin,
      "free-margin": freeMargin,
      updated: clock(updatedAt),
      seq: session.lastSeq.get(login) ?? "",
    });
  }

  const TRADE_COLUMNS = [
    "login", "ticket", "symbol", "side", "volume", "open-price", "close-price", "profit", "status",
  ];

  function renderTrade(frame) {
    const [, login, , ticket, symbol, side, volume, openPrice, closePrice, profit, status] = frame;
    const sortKey = String(ticket).padStart(20, "0");
    const row = upsertRow("trades", `trade-${ticket}`, login, sortKey, TRADE_COLUMNS);
    row.dataset.status = status;
    row.dataset.sign = Number(profit) < 0 ? "negative" : "positive";
    fill(row, {
      login,
      ticket,
      symbol,
      side,
      volume,
      "open-price": openPrice,
      "close-price": closePrice,
      profit,
      status,
    });
  }

  const ALERT_COLUMNS = ["login", "symbol", "condition", "price", "status", "updated"];

  function renderAlert([, login, , id, symbol, condition, price, status, updatedAt]) {
    const sortKey = String(id).padStart(20, "0");
    const row = upsertRow("alerts", `alert-${id}`, login, sortKey, ALERT_COLUMNS);
    row.dataset.status = status;
    fill(row, { login, symbol, condition, price, status, updated: clock(updatedAt) });
  }

  function renderNotification([, login, , level, message, ts]) {
    const list = $("#notifications");
    const item = document.createElement("li");
    item.dataset.level = level;
    const head = document.createElement("span");
    head.className = "meta";
    head.textContent = `${clock(ts)} ${login === null ? "everyone" : login} ${level}`;
    item.append(head, ` ${message}`);
    list.prepend(item);
    while (list.children.length > NOTIFICATIONS) list.lastElementChild.remove();
  }

  function clearLogin(login) {
    const rows = `:is(#balances, #trades, #alerts) tr[data-login="${CSS.escape(login)}"]`;
    for (const row of document.querySelectorAll(rows)) row.remove();
  }

  function buildQuoteBoard() {
    const body = $("#quotes tbody");
    for (const symbol of SYMBOLS) {
      const row = document.createElement("tr");
      row.dataset.symbol = symbol;
      for (const column of ["symbol", "bid", "ask", "dir", "status", "time"]) {
        const cell = document.createElement(column === "symbol" ? "th" : "td");
        cell.className = column;
        cell.textContent = column === "symbol" ? symbol : "";
        row.append(cell);
      }
      body.append(row);
    }
  }

  // ---------------------------------------------------------------- the frame log

  // The newest LOG_LINES lines are always kept; pausing only stops redrawing, so the
  // log can be read and selected while quotes keep ticking.
  const log = { lines: [], paused: false, held: 0 };

  function logLine(direction, raw) {
    const line = {
      text: `${clock(Date.now(), true)} ${direction} ${raw}`,
      kind: lineKind(direction, raw),
    };
    log.lines.push(line);
    if (log.lines.length > LOG_LINES) log.lines.shift();
    if (log.paused) {
      log.held++;
      $("#log-status").textContent = `paused, ${log.held} new lines held (last ${LOG_LINES} kept)`;
      return;
    }
    const list = $("#log");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    appendLogItem(list, line);
    while (list.children.length > LOG_LINES) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight; // follow, unless the reader scrolled up
  }

  const note = (message) => logLine("·", message);

  // Colours the log by kind, so the rare account frames stand out among the quotes.
  function lineKind(direction, raw) {
    if (direction !== "←") return direction === "→" ? "sent" : "note";
    if (raw[0] === "{") return "reply";
    if (raw.startsWith('["t"')) return "quote";
    if (raw.startsWith('["h"')) return "heartbeat";
    if (raw.startsWith('["s"')) return "status";
    if (raw.startsWith('["e"')) return "state";
    return raw[0] === "[" ? "account" : "pong";
  }

  function appendLogItem(list, { text, kind }) {
    const item = document.createElement("li");
    item.textContent = text;
    item.dataset.kind = kind;
    list.append(item);
  }

  function toggleLog() {
    log.paused = !log.paused;
    const button = $("#pause-log");
    button.textContent = log.paused ? "Resume" : "Pause";
    button.setAttribute("aria-pressed", String(log.paused));
    $("#log").dataset.paused = String(log.paused);
    if (log.paused) {
      log.held = 0;
      $("#log-status").textContent = "paused";
      return;
    }
    const list = $("#log");
    list.replaceChildren();
    for (const line of log.lines) appendLogItem(list, line);
    list.scrollTop = list.scrollHeight;
    $("#log-status").textContent = "";
  }

  // ---------------------------------------------------------------- log in, log out

  async function login(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const username = form.elements.username.value.trim();
    const password = form.elements.password.value;
    $("#login-error").textContent = "";
    let tokens;
    try {
      tokens = await postJson(config.tokenUrl, { username, password });
    } catch (error) {
      $("#login-error").textContent =
        error.status === 401 ? "Wrong username or password." : `Login failed: ${error.message}`;
      return;
    }
    // Memory only, never localStorage: a page script that could read storage could
    // steal the tokens. Reloading the page means logging in again.
    Object.assign(session, { access: tokens.access, refresh: tokens.refresh });
    form.elements.password.value = "";
    $("#who-user").textContent = username;
    document.body.dataset.loggedIn = "true";
    scheduleRefresh();
    connect();
  }

  function logout(state = "logged-out", detail = "logged out") {
    Object.assign(session, { access: null, refresh: null, attempt: 0, authFailures: 0 });
    clearTimeout(session.refreshTimer);
    clearTimeout(session.reconnectTimer);
    dropSocket();
    session.epoch++;
    session.syncing.clear();
    for (const login of [...session.lastSeq.keys()]) forgetLogin(login);
    for (const row of document.querySelectorAll("#quotes tbody tr")) {
      row.removeAttribute("data-subscribed");
      row.removeAttribute("data-dir");
      row.removeAttribute("data-status");
      for (const cell of row.querySelectorAll("td")) cell.textContent = "";
    }
    quoteState.clear();
    equityState.clear();
    $("#equity tbody").replaceChildren();
    session.epochs.clear();
    Object.assign(session, { lastHeartbeatAt: 0 });
    $("#heartbeat").textContent = "";
    $("#protocol").textContent = "";
    $("#notifications").replaceChildren();
    $("#token").textContent = "";
    $("#expires").textContent = "";
    document.body.dataset.loggedIn = "false";
    setState(state, detail);
  }

  // ---------------------------------------------------------------- start

  $("#ws-url").textContent = WS_URL;
  buildQuoteBoard();
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", () => logout());
  $("#pause-log").addEventListener("click", toggleLog);
  $("#mobile").addEventListener("click", toggleMobile);
  $("#reconnect").addEventListener("click", () => {
    session.attempt = 0;
    connect();
  });
})();
