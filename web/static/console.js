// Producer console: narrate, watch the queue and steer it. Every action is an HTTP call with the
// producer token; the WebSocket keeps the view current for every open console and listener page.

import { ChannelSocket, channelFromPath, el, queueLabel, store, stored } from "./channel.js";

const channel = channelFromPath();
const TOKEN_KEY = `broadcaster.token.${channel}`;
const $ = (id) => document.getElementById(id);
const state = { token: null, nowPlaying: null, queue: [], recent: [] };
window.broadcasterConsole = state;
const socket = new ChannelSocket(channel, { onMessage: handle, onState: showConnection, role: "console",
  token: () => state.token });

document.title = `${channel} · console`;
$("channel").textContent = channel;
$("listen-link").href = `/c/${encodeURIComponent(channel)}`;
$("login").addEventListener("submit", (e) => { e.preventDefault(); login($("token").value.trim()); });
$("say").addEventListener("submit", (e) => { e.preventDefault(); say(); });
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); say(); }
});
$("logout").addEventListener("click", () => { store(TOKEN_KEY, null); location.reload(); });
$("shuffle").addEventListener("click", () => control("/queue/shuffle", {}, "shuffle"));
$("repeat").addEventListener("change", () => control("/queue/repeat", { mode: $("repeat").value }, "set repeat"));
$("stop-bed").addEventListener("click", stopBed);
$("reload-scenes").addEventListener("click", loadScenes);
$("pause").addEventListener("click", () => (state.paused ? control("/resume", {}, "resume") : control("/pause", {}, "pause")));
$("upload").addEventListener("submit", (e) => { e.preventDefault(); upload(); });

const remembered = new URLSearchParams(location.hash.slice(1)).get("token") || stored(TOKEN_KEY);
history.replaceState(null, "", location.pathname); // keep the token out of the address bar, whatever comes of it
if (remembered) login(remembered);

async function api(method, path, body) {
  const response = await fetch(`/api/channels/${encodeURIComponent(channel)}${path}`, {
    method,
    headers: { Authorization: `Bearer ${state.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(data.error ? data.error.message : `HTTP ${response.status}`), { status: response.status });
  return data;
}

async function login(token) {
  state.token = token;
  $("login-error").textContent = "";
  try {
    const me = await api("GET", "/producer");
    $("over-switch").hidden = me.style !== "radio"; // talk-over: a voice over the music
    showVoices(me.voices || []);
    showListenLink(me);
  } catch (err) {
    state.token = null;
    if (err.status === 401) { // only a refused token is forgotten; a busy or unreachable server says nothing of it
      store(TOKEN_KEY, null);
      $("login-error").textContent = `Refused: ${err.message}`;
    } else {
      $("token").value = token; // one click tries it again
      $("login-error").textContent = `Could not check the token (${err.message}); try again in a moment.`;
    }
    return;
  }
  store(TOKEN_KEY, token);
  $("login").hidden = true;
  $("desk").hidden = false;
  $("text").focus();
  socket.start();
  loadScenes();
}

// A private channel's listen key is stored only as a digest: the server cannot put it in the link.
function showListenLink(me) {
  if (me.listen_url) $("listen-link").href = me.listen_url;
  $("listen-link").hidden = Boolean(me.private);
  $("listen-private").hidden = !me.private;
}

// ---- scenes: a bed under the line, one click per folder or file of the ambience folder ----------

async function loadScenes() {
  try {
    const data = await api("GET", "/scenes");
    $("scenes").replaceChildren(...data.scenes.map((scene) =>
      button(scene.folder ? `\u{1F4C1} ${scene.name}` : scene.name, () => setBed(scene), `Play ${scene.name} under the line`)));
    $("scenes-empty").hidden = data.scenes.length > 0;
    $("scenes-empty").textContent = data.folder
      ? `Nothing in ${data.folder} yet: put folders or files of music there.`
      : `No ambience folder: make music/${channel}/ambience (or music/ambience) with folders or files in it.`;
  } catch (err) {
    notice(`Could not list the scenes: ${err.message}`);
  }
}

async function setBed(scene) {
  show("scene-status", `Preparing ${scene.name}…`, "busy");
  try {
    await api("PUT", "/bed", scene.folder ? { folder: scene.folder, shuffle: true } : { path: scene.path });
    show("scene-status", "");
  } catch (err) {
    show("scene-status", `Could not play ${scene.name}: ${err.message}`, "error");
  }
}

async function stopBed() {
  try {
    await api("DELETE", "/bed");
  } catch (err) {
    show("scene-status", `Could not stop the bed: ${err.message}`, "error");
  }
}

function showBed(bed) {
  $("bed-now").textContent = bed
    ? `Under the line: ${bed.source} (${bed.tracks.map((t) => t.title).join(", ")}), volume ${Math.round(bed.volume * 100)}%, ${bed.duck_db} dB under the voice`
    : "No bed under the line.";
  $("stop-bed").disabled = !bed;
}

// The voices configured on the server ([tts.voices]), offered beside the default one.
function showVoices(names) {
  const select = $("voice");
  select.replaceChildren(el("option", { value: "", textContent: "default" }),
    ...names.map((name) => el("option", { value: name, textContent: name })));
  $("voice-choice").hidden = names.length === 0;
}

let sending = false; // a second Enter while the first send is on its way would queue the text twice
async function say() {
  const text = $("text").value;
  if (!text.trim() || sending) return;
  sending = true;
  $("say").querySelector("button[type=submit]").disabled = true;
  show("say-status", "Sending…", "busy");
  try {
    const body = { text };
    if (!$("over-switch").hidden && $("over").checked) body.over = true;
    if ($("voice").value) body.voice = $("voice").value;
    const queued = await api("POST", "/requests", body);
    $("text").value = "";
    show("say-status", `Queued (${queued.sentences} sentence${queued.sentences === 1 ? "" : "s"}).`, "done");
  } catch (err) {
    show("say-status", `Not sent: ${err.message}`, "error");
  } finally {
    sending = false;
    $("say").querySelector("button[type=submit]").disabled = false;
  }
}

async function control(path, body, what) {
  try {
    await api("POST", path, body);
  } catch (err) {
    notice(`Could not ${what}: ${err.message}`);
  }
}

async function upload() {
  const file = $("track-file").files[0];
  if (!file) return;
  show("upload-status", `Decoding ${file.name}…`, "busy");
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch(`/api/channels/${encodeURIComponent(channel)}/tracks`, {
      method: "POST", headers: { Authorization: `Bearer ${state.token}` }, body: form,
    });
  } catch (err) {
    show("upload-status", `${file.name} was not sent: ${err.message}`, "error");
    return;
  }
  const data = await response.json().catch(() => ({}));
  if (response.ok) {
    show("upload-status", `Queued ${data.title}${data.artist ? ` by ${data.artist}` : ""}.`, "done");
    $("track-file").value = "";
  } else {
    show("upload-status", `${file.name} refused: ${data.error ? data.error.message : `HTTP ${response.status}`}`, "error");
  }
}

async function act(requestId, action) {
  try {
    await api("POST", `/requests/${requestId}/${action}`);
  } catch (err) {
    notice(`Could not ${action}: ${err.message}`);
  }
}

function handle(m) {
  switch (m.type) {
    case "snapshot":
      showPause(m.paused_at_ms != null);
      showBed(m.bed);
      state.nowPlaying = m.now_playing;
      Object.assign(state, { over: m.over || [], queue: m.queue, queueLength: m.queue_length, recent: m.recent, repeat: m.repeat });
      showListeners(m.listeners);
      render();
      if (m.queue_length > m.queue.length) refresh(); // a long queue: the queue view lists it all
      break;
    case "audio_stream_started": case "audio_chunk_ready": case "request_played": refresh(); break;
    case "playback_queue_updated":
      Object.assign(state, { queue: m.queue, queueLength: m.queue_length, recent: m.recent, repeat: m.repeat });
      refresh();
      break;
    case "request_failed": notice(`A narration failed: ${m.reason}`); refresh(); break;
    case "request_cancelled": case "request_closed": refresh(); break;
    case "listeners_changed": showListeners(m.listeners); break;
    case "channel_paused": showPause(true); break;
    case "channel_resumed": showPause(false); break;
    case "bed_changed": showBed(m.bed); break;
  }
}

// Paused: every listener stopped together (a lead after the click) and resumes together.
function showPause(paused) {
  state.paused = paused;
  $("pause").textContent = paused ? "Resume for everyone" : "Pause for everyone";
  $("pause").setAttribute("aria-pressed", String(paused));
  $("pause-status").textContent = paused ? "Paused: nothing plays and no generation timeout runs." : "";
}

// now_playing is not in every message: fetch it (cheap) rather than reconstructing it.
let pending = null;
function refresh() {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    let response;
    try {
      response = await fetch(`/api/channels/${encodeURIComponent(channel)}/audio/queue`,
        { headers: { Authorization: `Bearer ${state.token}` } });
    } catch (err) {
      notice(`Could not update the queue view (${err.message}); it updates with the next change.`);
      return;
    }
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      notice(`Could not update the queue view (${data.error ? data.error.message : `HTTP ${response.status}`}); it updates with the next change.`);
      return;
    }
    const data = await response.json();
    Object.assign(state, { nowPlaying: data.now_playing, over: data.over || [], queue: data.queue, queueLength: data.queue_length,
      recent: data.recent, repeat: data.repeat });
    render();
  }, 50);
}

function render() {
  const now = state.nowPlaying;
  const over = (state.over || []).map((talk) => el("div", { className: "item" },
    el("span", {}, talk.text, el("span", { className: "meta" }, " (over the music)")),
    button("Skip", () => act(talk.request_id, "skip"), `Skip: ${talk.text.slice(0, 40)}`)));
  $("now").replaceChildren(now
    ? el("div", { className: "item" },
        el("span", {}, now.kind === "track" ? "\u266a " : "", now.text,
          el("span", { className: "meta" }, ` ${now.open ? "(still being written)" : progress(now)}`)),
        button("Skip", () => act(now.request_id, "skip"), `Skip: ${now.text.slice(0, 40)}`))
    : el("em", {}, "Nothing on the air"), ...over);
  $("repeat").value = state.repeat || "off";
  $("queue").replaceChildren(...state.queue.map((item, index) => el("li", {},
    el("div", { className: "item" },
      el("span", {}, item.kind === "track" ? "\u266a " : "", item.text,
        el("span", { className: "meta" }, ` ${queueLabel(item)}${item.auto ? " (auto-DJ)" : ""}`)),
      el("span", { className: "row" },
        index > 0 ? button("\u2191", () => move(item, state.queue[index - 1].position), `Move up: ${item.text.slice(0, 40)}`) : "",
        button("Cancel", () => act(item.request_id, "cancel"), `Cancel: ${item.text.slice(0, 40)}`)))),
    ...(state.queueLength > state.queue.length ? [el("li", { className: "meta" }, `and ${state.queueLength - state.queue.length} more`)] : [])));
  $("queue-empty").hidden = state.queue.length > 0;
  $("recent").replaceChildren(...state.recent.map((item) => el("li", {},
    el("div", { className: "item" },
      el("span", {}, item.text, el("span", { className: item.status === "failed" ? "error" : "meta" },
        ` ${item.status}${item.error && item.status !== "played" ? `: ${item.error}` : ""}`)),
      ["failed", "cancelled"].includes(item.status) ? button("Retry", () => act(item.request_id, "retry"), `Retry: ${item.text.slice(0, 40)}`) : ""))));
}

function move(item, position) {
  control(`/requests/${item.request_id}/move`, { position }, "move it");
}

// A narration made sentence by sentence shows how far synthesis has got; a track is made before it plays.
function progress(now) {
  const ready = now.chunks.length, total = now.chunks_total;
  return now.kind !== "track" && total > 1 && ready < total ? `(${ready}/${total} sentences ready)` : "";
}

function button(label, onClick, ariaLabel) {
  const b = el("button", { type: "button", textContent: label });
  b.setAttribute("aria-label", ariaLabel);
  b.addEventListener("click", onClick);
  return b;
}

function showConnection(kind, detail, why) {
  $("connection").textContent = { connecting: "Connecting…", live: "Live", refused: `Disconnected: ${detail}`,
    reconnecting: `${why ? `Disconnected: ${why}` : "Connection lost"}; retrying in ${Math.ceil(detail / 1000)} s` }[kind];
  $("connection").dataset.state = kind;
  if (kind === "refused") signOut(`Signed out: ${detail}. Enter the current producer token.`);
}

// The token stopped working (it was replaced): back to the log-in form, nothing remembered.
function signOut(message) {
  state.token = null;
  store(TOKEN_KEY, null);
  $("desk").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
}

function showListeners(count) { $("listeners").textContent = `${count} listening`; }

// A status line beside its control: what is under way stays; what is done, or refused, clears after a
// while, so the line never describes something long past.
const DONE_SHOWN_MS = 8000;
const ERROR_SHOWN_MS = 30000;
function show(id, text, kind = "done") {
  const line = $(id);
  line.textContent = text;
  line.classList.toggle("error", kind === "error");
  line.classList.toggle("meta", kind !== "error");
  if (!text || kind === "busy") return;
  setTimeout(() => { if (line.textContent === text) show(id, ""); }, kind === "error" ? ERROR_SHOWN_MS : DONE_SHOWN_MS);
}

// What went wrong away from any one control (queue buttons, a failed narration), at the foot of the page.
function notice(text) {
  $("notice").textContent = text;
  setTimeout(() => { if ($("notice").textContent === text) $("notice").textContent = ""; }, ERROR_SHOWN_MS);
}
