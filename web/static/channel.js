// The channel's WebSocket: connects, reconnects with backoff, keeps the clock in sync,
// and hands every server message to `onMessage`. Shared by the listener page and the console.
// A console proves itself with its first message (the token never goes in the URL); a socket the
// server refuses (4401: a key or token that no longer works) is not reopened.
// onState(kind, detail, why): "reconnecting" gives the ms left (again as it counts down) and why the
// server closed the socket, when it said.

import { ClockSync, nowMs } from "./sync.js";

const SYNC_BURST = 8;
// The connect burst meets a page at its busiest (loading, decoding, scheduling), so its round trips
// are slow and their offsets off by up to a millisecond: samples keep coming quickly for a while, so
// that quick round trips soon decide the offset, then slowly (every page's offset had settled within
// 8.5 s in the speaker benchmark). A whole audience reconnecting at once sends twice a second each.
const SYNC_SETTLE_MS = 10000;
const SYNC_SETTLE_EVERY_MS = 500;
const SYNC_EVERY_MS = 5000;
const REFUSED = 4401;
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 15000;
// The least wait after a close that says why (web/ws.py, web/fanout.py): sooner would be refused again.
const CLOSE_WAIT_MS = {
  4029: 15000, // rate limited; a console's auth is a producer write, and retries would spend what Send needs
  1013: 5000, // try again later: a cluster's event feed could not be joined
  4008: 5000, // too slow: the page fell behind its messages
};
const COUNTDOWN_STEP_MS = 5000;
const ASK_WHY_AFTER = 3; // sockets that closed before they opened, in a row
const SLEPT_MS = 1000; // the wall clock ran this much further than the page's while hidden: it slept

export class ChannelSocket {
  constructor(channel, { onMessage, onState, role = "listener", params = {}, token = null }) {
    this.channel = channel;
    this.role = role;
    this.params = params; // more query parameters: a private channel's key
    this.token = token; // a console's: () => the producer token, sent as the first message
    this.onMessage = onMessage;
    this.onState = onState;
    this.clock = new ClockSync();
    this.retryMs = RETRY_FIRST_MS;
    this.ws = null;
    this.timer = null;
    this.unopened = 0;
  }

  start() {
    this.refused = false;
    this.connect();
    if (this.watching) return; // a console starts again after each log-in: one listener is enough
    this.watching = true;
    // A laptop waking from sleep: the clock may have jumped and the socket may be dead. Where the page's
    // clock (performance.now) stopped while the wall clock went on, the samples taken before are wrong.
    let hidden = null;
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState !== "visible") { hidden = { wall: Date.now(), local: nowMs() }; return; }
      if (hidden && Math.abs(Date.now() - hidden.wall - (nowMs() - hidden.local)) > SLEPT_MS) this.clock.reset();
      hidden = null;
      if (!this.ws || this.ws.readyState > WebSocket.OPEN) this.connect();
      else this.syncBurst();
    });
  }

  connect() {
    clearTimeout(this.retry);
    if (this.refused) return; // the same key or token would only be refused again
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return; // already connecting or live
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const params = new URLSearchParams(Object.entries(this.params).filter(([, value]) => value));
    if (this.role === "console") params.set("role", "console");
    params.set("batch", "1"); // a step's messages come as one: a third of the server's sends
    const query = params.toString() ? `?${params}` : "";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/channels/${encodeURIComponent(this.channel)}${query}`);
    this.ws = ws;
    this.onState("connecting");
    ws.onopen = () => {
      ws.opened = true;
      this.unopened = 0;
      this.answered = false;
      if (this.token) ws.send(JSON.stringify({ type: "auth", token: this.token() }));
      this.onState("live"); this.syncBurst();
    };
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      clearTimeout(this.timer);
      const why = ws.error || event.reason;
      if (event.code === REFUSED) { this.refused = true; this.onState("refused", why); return; }
      if (!ws.opened && ++this.unopened >= ASK_WHY_AFTER && !this.answered) this.askWhy();
      const waitMs = Math.max(this.retryMs, CLOSE_WAIT_MS[event.code] || 0);
      this.retryMs = Math.min(waitMs * 2, RETRY_MAX_MS);
      this.wait(waitMs * (0.8 + Math.random() * 0.4), why); // jitter: a restarted server is not hit at once by all
    };
  }

  // Waits, saying how long is left every 5 s (the state is a live region: each change is read out), then connects.
  wait(delayMs, why) {
    const until = nowMs() + delayMs;
    const tick = () => {
      const leftMs = until - nowMs();
      if (leftMs <= 0) { this.connect(); return; }
      this.onState("reconnecting", leftMs, why);
      this.retry = setTimeout(tick, leftMs % COUNTDOWN_STEP_MS || COUNTDOWN_STEP_MS);
    };
    tick();
  }

  // A socket refused before it opens tells the page nothing (the browser hides the HTTP answer): ask the
  // channel's queue, which answers as the socket would for a channel gone (404) or a key replaced (401).
  // Asked after each such failure until it answers: the server may be out of reach, or restarting.
  async askWhy() {
    if (this.asking) return;
    this.asking = true;
    let response;
    try {
      const token = this.token && this.token();
      response = await fetch(withKey(`/api/channels/${encodeURIComponent(this.channel)}/audio/queue`, this.params.key),
        { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    } catch (_) {
      return; // out of reach: the next failure asks again
    } finally {
      this.asking = false;
    }
    if (response.status === 429 || response.status >= 500) return; // no answer yet
    this.answered = true;
    if (![401, 403, 404].includes(response.status)) return; // the channel is there: the socket itself was refused
    const body = await response.json().catch(() => ({}));
    if (this.live) return; // a socket opened meanwhile: whatever refused the others has passed
    this.refused = true;
    clearTimeout(this.retry);
    this.onState("refused", body.error ? body.error.message : `HTTP ${response.status}`);
  }

  // For tests and for a "reconnect now" button: drop the socket as a network failure would.
  drop() { if (this.ws) this.ws.close(); }

  receive(message) {
    if (message.type === "batch") {
      for (const each of Array.isArray(message.messages) ? message.messages : []) this.receiveOne(each);
    } else {
      this.receiveOne(message);
    }
  }

  receiveOne(message) {
    // Backoff starts over once a snapshot comes: a socket the server opens, refuses (an error) and closes
    // (its event feed away, a console's auth over the rate) must not bring the page back twice a second.
    if (message.type === "snapshot") { this.retryMs = RETRY_FIRST_MS; this.ws.joined = true; }
    // An error before the snapshot says why the socket is about to close; after it, it answers a message.
    if (message.type === "error" && !this.ws.joined) this.ws.error = message.message;
    if (message.type === "time_sync") {
      if (Number.isFinite(message.t1_us) && Number.isFinite(message.t2_us)) {
        this.clock.add(message.t0, message.t1_us / 1000, message.t2_us / 1000, nowMs(), true);
      } else {
        this.clock.add(message.t0, message.t1, message.t2, nowMs());
      }
    }
    this.onMessage(message);
  }

  get live() { return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN); }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  syncBurst() {
    for (let i = 0; i < SYNC_BURST; i++) setTimeout(() => this.ping(), i * 60);
    clearTimeout(this.timer);
    const settleUntil = nowMs() + SYNC_SETTLE_MS;
    const next = () => {
      const every = nowMs() < settleUntil ? SYNC_SETTLE_EVERY_MS : SYNC_EVERY_MS;
      this.timer = setTimeout(() => { this.ping(); next(); }, every);
    };
    next();
  }

  ping() { this.send({ type: "time_sync", t0: nowMs() }); }
}

// A private channel's listen key, from the shared link (?key=...); null for a public channel.
export function listenKey() {
  return new URLSearchParams(location.search).get("key");
}

// A same-origin URL with the listen key added when there is one.
export function withKey(url, key = listenKey()) {
  if (!key) return url;
  return `${url}${url.includes("?") ? "&" : "?"}key=${encodeURIComponent(key)}`;
}

export function channelFromPath() {
  return decodeURIComponent(location.pathname.split("/")[2] || "");
}

export function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// What a queued request is doing, in words a listener understands.
export function queueLabel(item) {
  if (item.open) return item.status === "pending" ? "waiting, still being written" : "still being written";
  if (item.status === "pending") return "waiting";
  if (item.status === "generating" && item.chunks_ready < item.chunks_total) {
    return `preparing ${item.chunks_ready}/${item.chunks_total}`;
  }
  return item.status === "generating" ? "ready" : item.status;
}

// Site storage, which a browser may have turned off: reading it then throws, and a page must still work.
export function stored(key) {
  try { return localStorage.getItem(key); } catch (_) { return null; }
}

export function store(key, value) {
  try { if (value === null) localStorage.removeItem(key); else localStorage.setItem(key, value); } catch (_) { /* off */ }
}
