// Listener page: plays the channel in step with every other listener.
//
// Each chunk is fetched, decoded, and started with Web Audio at the AudioContext time that
// corresponds to its starts_at_ms on the server clock. The mapping goes server time ->
// local time (ClockSync) -> AudioContext time (getOutputTimestamp, which already accounts
// for output latency; otherwise currentTime plus outputLatency). Chunks are short, so small
// drift is absorbed at the next chunk boundary, in the silence between sentences; a larger
// error (the clock estimate moved, the machine slept) restarts the playing chunk at the right
// place. <audio>.currentTime is never used for sync.

import { ChannelSocket, channelFromPath, el, listenKey, queueLabel, withKey } from "./channel.js";
import { nowMs } from "./sync.js";

const HARD_RESYNC_MS = 25;    // a playing chunk further off than this is restarted in place
const RETIME_MS = 1;          // a chunk not yet started is quietly re-timed for any change above this
const MIN_SYNC_SAMPLES = 8;   // the whole connect burst: a late joiner waits ~0.5 s rather than start off by ms
const LATENCY_KEY = "broadcaster.latencyMs";
const VOLUME_KEY = "broadcaster.volume";

const channel = channelFromPath();
const $ = (id) => document.getElementById(id);
const state = {
  ctx: null, gain: null, chunks: new Map(), request: null, current: null, listeners: 0,
  latencyMs: Number(localStorage.getItem(LATENCY_KEY) || 0),
  stats: { scheduled: [] }, // for tests and bench/sync.py: when each chunk will sound, by our clock
};
window.broadcaster = state;
const socket = new ChannelSocket(channel, { onMessage: handle, onState: showConnection, params: { key: listenKey() } });
state.socket = socket;

document.title = `${channel} · Broadcaster`;
$("channel").textContent = channel;
$("tune").addEventListener("click", tuneIn);
$("latency").value = state.latencyMs;
$("latency").addEventListener("change", () => {
  state.latencyMs = Number($("latency").value) || 0;
  localStorage.setItem(LATENCY_KEY, String(state.latencyMs));
  rescheduleAll();
});
$("volume").value = localStorage.getItem(VOLUME_KEY) || "1";
$("volume").addEventListener("input", applyVolume);
$("mute").addEventListener("click", () => { $("mute").setAttribute("aria-pressed", String($("mute").getAttribute("aria-pressed") !== "true")); applyVolume(); });

async function tuneIn() {
  state.ctx = new AudioContext({ latencyHint: "playback" });
  state.gain = state.ctx.createGain();
  state.gain.connect(state.ctx.destination);
  applyVolume();
  await state.ctx.resume();
  $("tune").hidden = true;
  $("player").hidden = false;
  socket.start();
  setInterval(checkDrift, 1000);
  setInterval(outputDifference, 200); // keep the output-time map fresh
  setInterval(showSync, 500);
}

function applyVolume() {
  localStorage.setItem(VOLUME_KEY, $("volume").value);
  const muted = $("mute").getAttribute("aria-pressed") === "true";
  $("mute").textContent = muted ? "Unmute" : "Mute";
  if (state.gain) state.gain.gain.value = muted ? 0 : Number($("volume").value);
}

// ---- time mapping -----------------------------------------------------------------------

// AudioContext time at which audio scheduled now is heard at local time `localMs`.
// getOutputTimestamp pairs an output position with the moment it is heard; single readings jitter
// by a few ms with the audio callback, so we use the median of recent (context - local) differences.
const outputMap = [];
function ctxTimeAt(localMs) {
  return (localMs / 1000) + outputDifference();
}

function outputDifference() {
  const ctx = state.ctx;
  const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : {};
  let diff;
  if (ts.performanceTime > 0) {
    diff = ts.contextTime - (performance.timeOrigin + ts.performanceTime) / 1000;
  } else {
    const latency = ctx.outputLatency || ctx.baseLatency || 0;
    diff = ctx.currentTime - nowMs() / 1000 - latency;
  }
  outputMap.push(diff);
  if (outputMap.length > 31) outputMap.shift();
  const sorted = [...outputMap].sort((a, b) => a - b);
  return sorted[sorted.length >> 1];
}

// Local time at which audio started at AudioContext time `when` will be heard.
function localTimeOf(when) {
  return nowMs() + (when - ctxTimeAt(nowMs())) * 1000;
}

function ctxTimeForServer(serverMs) {
  return ctxTimeAt(socket.clock.localMs(serverMs) - state.latencyMs);
}

// ---- messages ---------------------------------------------------------------------------

function handle(m) {
  switch (m.type) {
    case "snapshot": onSnapshot(m); break;
    case "audio_stream_started":
      state.request = describe(m);
      renderCaptions();
      break;
    case "audio_chunk_ready": addChunk(m.request_id, m, true); break;
    case "timeline_shifted": {
      const chunk = state.chunks.get(m.chunk_id);
      if (chunk && chunk.starts_at_ms !== m.starts_at_ms) { chunk.starts_at_ms = m.starts_at_ms; schedule(chunk); }
      break;
    }
    case "request_failed":
      dropChunks(m.discarded_chunk_ids);
      notice(`A narration failed: ${m.reason}`);
      break;
    case "request_cancelled":
      stopRequest(m.request_id);
      if (m.skipped) notice("The producer skipped the narration on the air.");
      break;
    case "playback_queue_updated": showQueue(m.queue); break;
    case "listeners_changed": showListeners(m.listeners); break;
    case "time_sync": scheduleWaiting(); break;
    case "error": console.warn("server:", m.message); break;
  }
}

function onSnapshot(m) {
  showQueue(m.queue);
  showListeners(m.listeners);
  const playing = m.now_playing;
  const keep = new Set(playing ? playing.chunks.map((c) => c.chunk_id) : []);
  for (const [id, chunk] of state.chunks) if (!keep.has(id)) { stop(chunk); state.chunks.delete(id); }
  state.request = playing ? describe(playing) : null;
  if (playing) playing.chunks.forEach((c) => addChunk(playing.request_id, c));
  renderCaptions();
}

// `live`: announced as it went on the air, not found in a snapshot. For those the server hears, with
// the acknowledgement, when the audio was ready to play: how much lead this listener needed.
async function addChunk(requestId, info, live = false) {
  const known = state.chunks.get(info.chunk_id);
  if (known) { // after a reconnect: keep what is already playing unless its time moved
    if (known.starts_at_ms !== info.starts_at_ms) { known.starts_at_ms = info.starts_at_ms; schedule(known); }
    return;
  }
  const chunk = { ...info, request_id: requestId, buffer: null, source: null, when: null };
  state.chunks.set(info.chunk_id, chunk);
  renderCaptions();
  try {
    const response = await fetch(withKey(info.url));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    chunk.buffer = await state.ctx.decodeAudioData(await response.arrayBuffer());
    if (live) chunk.readyLocalMs = nowMs();
  } catch (err) {
    notice(`Could not load a sentence (${err.message}); it will be skipped.`);
    return;
  }
  if (state.chunks.has(chunk.chunk_id)) schedule(chunk);
}

// ---- scheduling -------------------------------------------------------------------------

// Chunks decoded before the first clock sample arrived wait for it: scheduling by an unsynced clock
// could start them at the wrong moment.
function scheduleWaiting() {
  for (const chunk of state.chunks.values()) if (chunk.buffer && !chunk.source && !chunk.done) schedule(chunk);
}

function schedule(chunk) {
  if (!chunk.buffer || socket.clock.samples.length < MIN_SYNC_SAMPLES) return;
  stop(chunk);
  const ctx = state.ctx;
  const when = ctxTimeForServer(chunk.starts_at_ms);
  const late = Math.max(0, ctx.currentTime - when);
  if (late >= chunk.buffer.duration) { chunk.done = true; return; } // already over: a late joiner skips it
  const source = ctx.createBufferSource();
  source.buffer = chunk.buffer;
  source.connect(state.gain);
  source.onended = () => {
    if (chunk.source !== source) return;
    chunk.source = null;
    chunk.done = true;
    const ack = { type: "audio_played", chunk_id: chunk.chunk_id };
    if (chunk.readyLocalMs !== undefined) ack.ready_at_ms = Math.round(socket.clock.serverMs(chunk.readyLocalMs));
    socket.send(ack);
  };
  source.start(when + late, late);
  Object.assign(chunk, { source, when });
  state.stats.scheduled.push({
    chunk_id: chunk.chunk_id, starts_at_ms: chunk.starts_at_ms,
    sounds_at_local_ms: localTimeOf(when) + state.latencyMs, // when its first sample is heard, by our clock
    offset_ms: socket.clock.offsetMs, late_ms: late * 1000, at_local_ms: nowMs(),
    decoded_ms: chunk.buffer.duration * 1000, duration_ms: chunk.duration_ms,
  });
  const highlightIn = Math.max(0, (when - ctx.currentTime) * 1000);
  setTimeout(() => { if (chunk.source === source) { state.current = chunk.chunk_id; renderCaptions(); } }, highlightIn);
}

function stop(chunk) {
  const source = chunk.source;
  chunk.source = null;
  if (source) { try { source.stop(); } catch (_) { /* never started */ } }
}

function rescheduleAll() {
  for (const chunk of state.chunks.values()) if (chunk.source) schedule(chunk);
}

function dropChunks(ids) {
  for (const id of ids || []) { const c = state.chunks.get(id); if (c) { stop(c); state.chunks.delete(id); } }
  renderCaptions();
}

function stopRequest(requestId) {
  for (const [id, c] of state.chunks) if (c.request_id === requestId) { stop(c); state.chunks.delete(id); }
  if (state.request && state.request.id === requestId) state.request = null;
  renderCaptions();
}

// Follow the clock estimate: chunks not yet sounding are re-timed silently; a playing chunk is
// restarted in place only when it is audibly off.
function checkDrift() {
  const soon = state.ctx.currentTime + 0.1;
  for (const chunk of state.chunks.values()) {
    if (!chunk.source) continue;
    const error = Math.abs(ctxTimeForServer(chunk.starts_at_ms) - chunk.when) * 1000;
    if (error > (chunk.when > soon ? RETIME_MS : HARD_RESYNC_MS)) schedule(chunk);
  }
  const cutoff = socket.clock.serverMs() - 60000; // forget long-finished chunks
  for (const [id, c] of state.chunks) if (c.starts_at_ms + c.duration_ms < cutoff) state.chunks.delete(id);
  if (state.stats.scheduled.length > 500) state.stats.scheduled.splice(0, 250);
}

// ---- display ----------------------------------------------------------------------------

function showConnection(kind, detail) {
  const text = { connecting: "Connecting…", live: "Live", refused: `Disconnected: ${detail}; ask for the current link`,
    reconnecting: `Connection lost; retrying in ${Math.ceil(detail / 1000)} s` }[kind];
  $("connection").textContent = text;
  $("connection").dataset.state = kind;
}

function showListeners(count) {
  state.listeners = count;
  $("listeners").textContent = `${count} listening`;
}

function showSync() {
  const clock = socket.clock;
  if (!clock.samples.length) return;
  $("sync").textContent = `Clock offset ${clock.offsetMs.toFixed(1)} ms · sync error ≤ ${clock.errorBoundMs.toFixed(1)} ms` +
    (clock.driftPpm ? ` · drift ${clock.driftPpm.toFixed(0)} ppm` : "");
}

function notice(text) {
  $("notice").textContent = text;
  setTimeout(() => { if ($("notice").textContent === text) $("notice").textContent = ""; }, 8000);
}

function describe(m) {
  return { id: m.request_id, text: m.text, kind: m.kind, title: m.title, artist: m.artist, durationMs: m.duration_ms };
}

function clockTime(ms) {
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

function renderCaptions() {
  const box = $("captions");
  if (!state.request) { box.replaceChildren(el("em", {}, "Nothing on the air")); return; }
  if (state.request.kind === "track") {
    box.replaceChildren(el("span", { className: "current" }, `\u266a ${state.request.title}`),
      state.request.artist ? el("span", { className: "meta" }, ` \u2014 ${state.request.artist}`) : "",
      state.request.durationMs ? el("span", { className: "meta" }, ` (${clockTime(state.request.durationMs)})`) : "");
    return;
  }
  const parts = [...state.chunks.values()].filter((c) => c.request_id === state.request.id).sort((a, b) => a.seq - b.seq);
  if (!parts.length) { box.textContent = state.request.text; return; }
  box.replaceChildren(...parts.map((c) => el("span", { className: c.chunk_id === state.current ? "current" : "" }, c.text + " ")));
}

function showQueue(queue) {
  $("queue").replaceChildren(...queue.map((item) => el("li", {}, item.text,
    el("span", { className: "meta" }, ` ${queueLabel(item)}`))));
  $("queue-empty").hidden = queue.length > 0;
}
