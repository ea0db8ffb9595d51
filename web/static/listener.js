// Listener page: plays the channel in step with every other listener.
//
// Each chunk is fetched, decoded, and played with Web Audio at the AudioContext time that
// corresponds to its starts_at_ms on the server clock. The mapping goes server time -> local
// time (ClockSync, sync.js) -> AudioContext time heard then (OutputClock, output.js, from the
// output's own timestamps). The Player (player.js) keeps what plays on that timeline: it follows
// both clocks' rates, takes small errors out smoothly and fixes an output glitch with a short
// crossfade. <audio>.currentTime is never used for sync.

import { BedLayer, automate, duckEnvelope, gainAt, levelAt } from "./bed.js";
import { LARGE_S, SMALL, chooseLarge, chooseSmall, chosenLarge } from "./buffer.js";
import { ChannelSocket, channelFromPath, el, listenKey, queueLabel, store, stored, withKey } from "./channel.js";
import { OutputClock } from "./output.js";
import { Player, soundsFrom } from "./player.js";
import { nowMs } from "./sync.js";

const MIN_SYNC_SAMPLES = 8;   // the whole connect burst: a late joiner waits ~0.5 s rather than start off by ms
const TICK_MS = 40;           // how often the output is read and what plays is kept in place
const REPORT_MS = 10000;      // how often the page tells the server how well it keeps in step
// This many output glitches within STRUGGLING_MS and the page says, in words, that this device's
// audio keeps falling behind: on a busy machine an output can underrun again and again for seconds,
// and then what is heard can be tens of ms off while the output's own timestamps hardly show it
// (docs/performance.md, "Sync at the speaker").
const STRUGGLING_GLITCHES = 4;
const STRUGGLING_MS = 10000;
// A page switching its output buffer (buffer.js) plays on until the new AudioContext's output
// has been read this long, then hands over HANDOVER_AHEAD_S ahead. A new output's first seconds are
// unsteady: heard, it jumps by ~10 ms for most of a second at a time, and its timestamps do not show
// it (recorded at the speaker; docs/performance.md).
const HANDOVER_AFTER_MS = 5000;
const HANDOVER_AHEAD_S = 0.1;
// A new output that does not keep steady this long is given up: the old one plays on.
const GIVE_UP_MOVE_MS = 20000;
// Decoded audio is large (a minute of stereo is 23 MB) and every segment of a track is placed at once:
// a chunk is fetched once it starts within FETCH_AHEAD_MS (never fewer than FETCH_LOADS_AHEAD of the
// slowest recent loads, for a slow network), one already over is skipped, and a buffer goes once played.
const FETCH_AHEAD_MS = 15000;
const FETCH_LOADS_AHEAD = 4;
const LOADS_KEPT = 20;
const LATENCY_KEY = "broadcaster.latencyMs";
const VOLUME_KEYS = { voice: "broadcaster.volume", music: "broadcaster.musicVolume" }; // per layer

const channel = channelFromPath();
const $ = (id) => document.getElementById(id);
const state = {
  ctx: null, gain: null, chunks: new Map(), request: null, current: null, listeners: 0,
  latencyMs: Number(stored(LATENCY_KEY) || 0),
  // for tests and benchmarks: when each chunk will sound, by our clock; and every half second
  // [local ms, clock offset ms, clock drift ppm, speaker clock ppm, error ms]
  stats: { scheduled: [], sync: [] },
  output: null, player: null,
  outputBuffer: null, // { hint, extraMs, movedAtMs }: the AudioContext's latencyHint and what it costs
  next: null, // the AudioContext being opened to switch buffers
  bufferMoves: 0, // switches to the larger buffer
  pausedAtMs: null, // server ms the channel stopped at (or will stop at, a lead from the pause), while paused
  beds: new Map(), // bed_id -> BedLayer: the bed playing and those fading out
  bedBuffers: new Map(), // chunk_id -> Promise<AudioBuffer> of bed segments
  speech: new Map(), // chunk_id -> [start, end] of narration: what the bed ducks under
  kinds: new Map(), // request_id -> "speech" or "track"
  voiceGain: null, musicGain: null,
  trackDuck: null, // tracks on the line: into the music layer, dipping under talk-over
  overSpeech: new Map(), // chunk_id -> [start, end] of talk-over narration: what tracks duck under
  overRequest: null, // the talk-over narration on the air, for the captions
  trackDuckLaidOut: -Infinity,
  loadsMs: [], // how long the last few chunks took to fetch and decode
};
const TALK_OVER_DUCK_DB = -12; // as TALK_OVER_DUCK_DB in broadcaster/core/bed.py
window.broadcaster = state;
const socket = new ChannelSocket(channel, { onMessage: handle, onState: showConnection, params: { key: listenKey() } });
state.socket = socket;

document.title = `${channel} · Broadcaster`;
$("channel").textContent = channel;
$("tune").addEventListener("click", () => (state.ctx ? resumeByTap() : tuneIn()));
document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") resumeAudio(state.ctx); });
$("latency").value = state.latencyMs;
$("latency").addEventListener("change", () => {
  state.latencyMs = Number($("latency").value) || 0;
  store(LATENCY_KEY, String(state.latencyMs));
  keepInStep(); // what plays crossfades to its new place; what waits is re-timed
});
for (const layer of ["voice", "music"]) {
  $(`${layer}-volume`).value = stored(VOLUME_KEYS[layer]) || "1";
  $(`${layer}-volume`).addEventListener("input", applyVolume);
}
$("larger-buffer").checked = Boolean(chosenLarge());
$("larger-buffer").addEventListener("change", switchBuffer);
$("mute").addEventListener("click", () => { $("mute").setAttribute("aria-pressed", String($("mute").getAttribute("aria-pressed") !== "true")); applyVolume(); });

async function tuneIn() {
  const chosen = chosenLarge();
  const audio = openAudio(chosen ? LARGE_S : SMALL);
  useAudio(audio);
  state.outputBuffer = { hint: audio.hint, extraMs: chosen ? chosen.extraMs : 0, movedAtMs: null };
  await state.ctx.resume();
  if (state.bedInfo) setBeds(state.bedInfo.playing, state.bedInfo.fading);
  $("tune").hidden = true;
  $("player").hidden = false;
  socket.start();
  setInterval(() => { state.output.read(); settleNext(); fetchAhead(); keepInStep(); }, TICK_MS);
  setInterval(forgetOld, 1000);
  setInterval(showSync, 500);
  setInterval(report, REPORT_MS);
}

// An AudioContext and the gains every layer plays through, with the clock of its output.
function openAudio(hint) {
  const ctx = new AudioContext({ latencyHint: hint });
  const gain = ctx.createGain(); // mute
  gain.connect(ctx.destination);
  const voiceGain = ctx.createGain(), musicGain = ctx.createGain(), trackDuck = ctx.createGain();
  voiceGain.connect(gain);
  musicGain.connect(gain);
  trackDuck.connect(musicGain);
  return { hint, ctx, gain, voiceGain, musicGain, trackDuck, output: new OutputClock(ctx) };
}

function useAudio(audio) {
  const { ctx, gain, voiceGain, musicGain, trackDuck, output } = audio;
  Object.assign(state, { ctx, gain, voiceGain, musicGain, trackDuck, output });
  ctx.onstatechange = () => resumeAudio(ctx);
  state.player = new Player(ctx, voiceGain, timeline);
  output.onGlitch = onGlitch;
  applyVolume();
}

// A phone locked, a call, another app took the sound: the browser stops the audio. Start it again when
// it may; where it wants a tap for that, ask for one (the timeline went on, so it comes back in step).
async function resumeAudio(ctx) {
  if (!ctx || ctx !== state.ctx || ctx.state === "running" || ctx.state === "closed") return;
  try { await ctx.resume(); } catch (_) { /* it needs a gesture */ }
  if (ctx === state.ctx && ctx.state !== "running" && document.visibilityState === "visible") {
    $("tune").textContent = "Tap to resume";
    $("tune").hidden = false;
  }
}

async function resumeByTap() {
  try { await state.ctx.resume(); } catch (err) { notice(`The browser would not start the sound again (${err.message}).`); }
  if (state.ctx.state === "running") $("tune").hidden = true;
}

// The output moved: gains laid out by the old mapping are laid out again.
function onGlitch() {
  for (const layer of state.beds.values()) layer.relayOut();
  state.trackDuckLaidOut = -Infinity;
  keepInStep();
  report();
}

// ---- switching the output buffer ------------------------------------------------------------

// The listener turned the larger buffer on or off: a new AudioContext with that buffer opens, and
// what plays moves to it once its output is steady.
function switchBuffer() {
  const hint = $("larger-buffer").checked ? LARGE_S : SMALL;
  if (!state.ctx || state.next || hint === state.outputBuffer.hint) return;
  state.next = { ...openAudio(hint), openedAtMs: nowMs() };
  state.next.ctx.resume();
  $("larger-buffer").disabled = true;
}

// Every tick while a new AudioContext opens: read its output, and once that is steady hand over.
function settleNext() {
  const next = state.next;
  if (!next) return;
  next.output.read();
  if (next.output.ready && next.output.steadyForMs() >= HANDOVER_AFTER_MS && ready()) handOver(next);
  else if (nowMs() - next.openedAtMs > GIVE_UP_MOVE_MS) {
    state.next = null;
    next.ctx.close();
    $("larger-buffer").checked = state.outputBuffer.hint !== SMALL;
    $("larger-buffer").disabled = false;
    notice("This device's audio output did not settle with the other buffer, so it stays as it was.");
  }
}

// Everything plays on from the new context: what sounds now fades out on the old one as it fades in
// on the new, at the same moment heard (HANDOVER_AHEAD_S ahead, by the new output's clock); then
// the old context closes. Decoded buffers carry over; nothing is acknowledged twice or skipped.
function handOver(next) {
  const old = { ctx: state.ctx, output: state.output, player: state.player };
  const local = nowMs();
  const extraMs = Math.max(0, Math.round(renderAheadMs(next, local) - renderAheadMs(old, local)));
  const startNew = next.ctx.currentTime + HANDOVER_AHEAD_S;
  const stopOld = old.output.ctxAt(next.output.localAt(startNew));
  for (const chunk of state.chunks.values()) { if (chunk.voice) { old.player.release(chunk, stopOld); chunk.handedOver = true; } }
  for (const layer of state.beds.values()) layer.close(stopOld);
  state.beds.clear();
  next.output.glitches = [...old.output.glitches, ...next.output.glitches];
  next.output.glitchCount += old.output.glitchCount;
  useAudio(next);
  state.next = null;
  state.player.crossfades = old.player.crossfades;
  state.player.ticks = old.player.ticks; // how late the page's timers run: the page's, not the context's
  state.player.notBefore = startNew;
  state.outputBuffer = { hint: next.hint, extraMs: next.hint === SMALL ? 0 : extraMs, movedAtMs: local };
  if (next.hint === SMALL) chooseSmall();
  else { chooseLarge(extraMs); state.bufferMoves += 1; }
  $("larger-buffer").disabled = false;
  for (const chunk of state.chunks.values()) if (chunk.destination) chunk.destination = state.trackDuck;
  state.trackDuckLaidOut = -Infinity;
  if (state.bedInfo) setBeds(state.bedInfo.playing, state.bedInfo.fading);
  for (const layer of state.beds.values()) layer.player.notBefore = startNew;
  keepInStep();
  for (const chunk of state.chunks.values()) delete chunk.handedOver;
  report();
  setTimeout(() => old.ctx.close(), 1000);
}

// How far ahead of what is heard an AudioContext renders (ms): its output latency, by its own clock.
function renderAheadMs(audio, local) {
  return (audio.ctx.currentTime - audio.output.ctxAt(local)) * 1000;
}

function applyVolume() {
  for (const layer of ["voice", "music"]) store(VOLUME_KEYS[layer], $(`${layer}-volume`).value);
  const muted = $("mute").getAttribute("aria-pressed") === "true";
  $("mute").textContent = muted ? "Unmute" : "Mute";
  if (!state.gain) return;
  state.gain.gain.value = muted ? 0 : 1;
  state.voiceGain.gain.value = Number($("voice-volume").value);
  state.musicGain.gain.value = Number($("music-volume").value);
}

// ---- time mapping -----------------------------------------------------------------------

// The server's timeline in AudioContext time, through the page's clock. The speaker delay the listener
// set (a Bluetooth speaker, say) is heard after the output: audio is played that much earlier.
const timeline = {
  ctxAt: (serverMs) => state.output.ctxAt(socket.clock.localMs(serverMs) - state.latencyMs),
  serverAt: (when) => socket.clock.serverMs(state.output.localAt(when) + state.latencyMs),
  // buffer seconds per context second that keep audio on server time
  rate: () => (1 + socket.clock.driftPpm / 1e6) / (state.output.line.rate * 1000),
  serverNow: () => socket.clock.serverMs(),
};

// ---- messages ---------------------------------------------------------------------------

function handle(m) {
  switch (m.type) {
    case "snapshot": onSnapshot(m); break;
    case "audio_stream_started":
      if (m.over) state.overRequest = describe(m); else state.request = describe(m);
      state.kinds.set(m.request_id, m.over ? "over" : m.kind);
      renderCaptions();
      break;
    case "request_closed":
      for (const request of [state.request, state.overRequest]) if (request && request.id === m.request_id) request.open = false;
      renderCaptions();
      break;
    case "request_played": endRequest(m.request_id); break;
    case "audio_chunk_ready": noteSpeech(m.request_id, m); addChunk(m.request_id, m, true); break;
    case "timeline_shifted": {
      const chunk = state.chunks.get(m.chunk_id);
      if (chunk && chunk.starts_at_ms !== m.starts_at_ms) retime(chunk, m.starts_at_ms);
      const span = state.speech.get(m.chunk_id);
      if (span) noteSpeech(m.request_id, { chunk_id: m.chunk_id, starts_at_ms: m.starts_at_ms, duration_ms: span[1] - span[0] });
      break;
    }
    case "bed_changed": setBeds(m.bed, m.fading_beds); break;
    case "request_failed":
      dropChunks(m.discarded_chunk_ids);
      // Only what this listener was hearing is news to it; the reason (an engine's words) is the producer's.
      if ([state.request, state.overRequest].some((r) => r && r.id === m.request_id)) {
        notice("The narration on the air could not be finished; the rest of it is skipped.");
      }
      endRequest(m.request_id);
      break;
    case "request_cancelled":
      stopRequest(m.request_id, m.stopped_at_ms);
      if (m.skipped) notice("The producer skipped the narration on the air.");
      break;
    case "channel_paused": pauseAt(m.paused_at_ms); break;
    case "channel_resumed": resume(m); break;
    case "playback_queue_updated": showQueue(m.queue, m.queue_length); break;
    case "listeners_changed": showListeners(m.listeners); break;
    case "time_sync": fetchAhead(); scheduleWaiting(); break;
    case "error": console.warn("server:", m.message); break;
  }
}

// Its last audio has sounded (the server's clock says so): it is no longer on the air.
function endRequest(requestId) {
  if (state.overRequest && state.overRequest.id === requestId) state.overRequest = null;
  if (state.request && state.request.id === requestId) state.request = null;
  renderCaptions();
}

function onSnapshot(m) {
  if (m.paused_at_ms != null) pauseAt(m.paused_at_ms); else showPaused(false);
  state.pausedAtMs = m.paused_at_ms ?? null;
  state.speech = new Map((m.speech_ms || []).map(([start, end], i) => [`snapshot${i}`, [start, end]]));
  if (m.now_playing) state.kinds.set(m.now_playing.request_id, m.now_playing.kind);
  for (const over of m.over || []) state.kinds.set(over.request_id, "over");
  setBeds(m.bed ?? null, m.fading_beds || []);
  showQueue(m.queue, m.queue_length);
  showListeners(m.listeners);
  const playing = m.now_playing, overs = m.over || [];
  const next = (m.queue || []).filter((r) => r.chunks); // on the air already, in its lead
  const keep = new Set([playing, ...overs, ...next].filter(Boolean).flatMap((r) => r.chunks.map((c) => c.chunk_id)));
  for (const [id, chunk] of state.chunks) if (!keep.has(id)) { stop(chunk); state.chunks.delete(id); }
  state.request = playing ? describe(playing) : null;
  state.overRequest = overs.length ? describe(overs[overs.length - 1]) : null;
  if (playing) playing.chunks.forEach((c) => addChunk(playing.request_id, c));
  for (const over of overs) over.chunks.forEach((c) => { noteSpeech(over.request_id, c); addChunk(over.request_id, c); });
  for (const r of next) { state.kinds.set(r.request_id, r.kind); r.chunks.forEach((c) => addChunk(r.request_id, c)); }
  renderCaptions();
}

// `live`: announced as it went on the air, not found in a snapshot. For those the server hears, with
// the acknowledgement, when the audio was ready to play: how much lead this listener needed.
async function addChunk(requestId, info, live = false) {
  const known = state.chunks.get(info.chunk_id);
  if (known) { // after a reconnect: keep what is already playing unless its time moved
    known.from_ms = info.from_ms;
    if (known.starts_at_ms !== info.starts_at_ms) retime(known, info.starts_at_ms);
    known.failed = false; // a fetch that failed is tried again
    if (fetchNow(known)) await load(known, false);
    return;
  }
  const chunk = { ...info, request_id: requestId, buffer: null, voice: null };
  if (state.kinds.get(requestId) === "track") chunk.destination = state.trackDuck;
  state.chunks.set(info.chunk_id, chunk);
  renderCaptions();
  // Fetched at once if due within the window, so its readiness measures the lead; else by fetchAhead.
  if (fetchNow(chunk)) await load(chunk, live);
}

// Every tick: fetch what has come within the window ahead.
function fetchAhead() {
  for (const chunk of state.chunks.values()) if (fetchNow(chunk)) load(chunk, false);
}

// Whether to fetch a chunk now; one already over is marked done (a late joiner skips it). Not before
// the clock has a sample: until then what is over or near is not known.
function fetchNow(chunk) {
  if (chunk.buffer || chunk.loading || chunk.done || chunk.failed || !socket.clock.samples.length) return false;
  const server = socket.clock.serverMs();
  const now = state.pausedAtMs === null ? server : Math.min(server, state.pausedAtMs); // paused: time stands still
  if (chunk.starts_at_ms + chunk.duration_ms <= now) { chunk.done = true; return false; }
  const slowest = Math.max(0, ...state.loadsMs);
  return soundsFrom(chunk) < now + Math.max(FETCH_AHEAD_MS, FETCH_LOADS_AHEAD * slowest);
}

async function load(chunk, live) {
  chunk.loading = true;
  const began = nowMs();
  try {
    const response = await fetch(withKey(chunk.url));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    chunk.buffer = await state.ctx.decodeAudioData(await response.arrayBuffer());
    if (live) chunk.readyLocalMs = nowMs();
    state.loadsMs.push(nowMs() - began);
    if (state.loadsMs.length > LOADS_KEPT) state.loadsMs.shift();
  } catch (err) {
    chunk.failed = true; // tried again after a reconnect
    notice(`Could not load a sentence (${err.message}); it is skipped unless the connection comes back in time.`);
    return;
  } finally {
    chunk.loading = false;
  }
  if (state.chunks.has(chunk.chunk_id)) schedule(chunk);
}

// ---- scheduling -------------------------------------------------------------------------

// Chunks decoded before the clocks are known wait for them: scheduling by an unsynced clock could
// start them at the wrong moment.
function ready() {
  return state.output && state.output.ready && socket.clock.samples.length >= MIN_SYNC_SAMPLES;
}

function scheduleWaiting() {
  for (const chunk of state.chunks.values()) if (chunk.buffer && !chunk.voice && !chunk.done) schedule(chunk);
}

function schedule(chunk) {
  if (!chunk.buffer || !ready() || heldByPause(chunk)) return;
  chunk.onEnded = () => {
    chunk.done = true;
    chunk.buffer = null; // played: its decoded audio is not needed again
    const ack = { type: "audio_played", chunk_id: chunk.chunk_id };
    // ready to be heard: a larger output buffer (buffer.js) delays what is heard by its extra latency
    if (chunk.readyLocalMs !== undefined) ack.ready_at_ms = Math.round(socket.clock.serverMs(chunk.readyLocalMs) + state.outputBuffer.extraMs);
    socket.send(ack);
  };
  if (!state.player.play(chunk)) { // already over: a late joiner skips it; a handover played it out
    if (chunk.handedOver) chunk.onEnded(); else { chunk.done = true; chunk.buffer = null; }
    return;
  }
  if (state.pausedAtMs !== null) state.player.cut(chunk, timeline.ctxAt(state.pausedAtMs)); // spans the pause
  const voice = chunk.voice;
  if (!voice) return;
  const start = voice.segments[0];
  state.stats.scheduled.push({
    chunk_id: chunk.chunk_id, starts_at_ms: chunk.starts_at_ms,
    sounds_at_local_ms: state.output.localAt(start.t) + state.latencyMs - start.pos * 1000, // its first sample, by our clock
    offset_ms: socket.clock.offsetMs, late_ms: start.pos * 1000, at_local_ms: nowMs(),
    decoded_ms: chunk.buffer.duration * 1000, duration_ms: chunk.duration_ms,
  });
}

// ---- pause -------------------------------------------------------------------------------

// Paused: what sounds at the pause's moment stops there, on the same sample for every listener; what
// would start at or after it waits for the resume.
function pauseAt(atMs) {
  state.pausedAtMs = atMs;
  showPaused(true);
  if (!ready()) return;
  const t = timeline.ctxAt(atMs);
  for (const chunk of state.chunks.values()) if (chunk.voice) state.player.cut(chunk, t);
  for (const layer of state.beds.values()) layer.cut(atMs);
}

function heldByPause(chunk) {
  const at = state.pausedAtMs;
  if (at === null || chunk.starts_at_ms + chunk.duration_ms <= at) return false;
  return soundsFrom(chunk) >= at || socket.clock.serverMs() >= at;
}

// Everything that had not ended by the pause moved later by its length; a chunk it cut goes on from
// the resume at the sample it stopped at (the server says so with `from_ms` in snapshots).
function resume(m) {
  state.pausedAtMs = null;
  showPaused(false);
  for (const chunk of state.chunks.values()) {
    if (m.shift_ms === 0 || chunk.starts_at_ms + chunk.duration_ms <= m.paused_at_ms) continue;
    if (chunk.starts_at_ms < m.paused_at_ms) chunk.from_ms = m.resumes_at_ms;
    chunk.starts_at_ms += m.shift_ms;
  }
  for (const span of state.speech.values()) {
    if (span[1] > m.paused_at_ms) { span[0] += m.shift_ms; span[1] += m.shift_ms; }
  }
  // Beds the pause moved come in a bed_changed; a resume that moved nothing goes on from the pause.
  if (m.shift_ms === 0) for (const layer of state.beds.values()) layer.reset(m.paused_at_ms);
  if (m.shift_ms === 0) { // resumed before the pause took effect: what was cut goes on at its moment
    for (const chunk of state.chunks.values()) {
      if (!chunk.voice && !chunk.done && chunk.starts_at_ms < m.paused_at_ms && chunk.starts_at_ms + chunk.duration_ms > m.paused_at_ms) {
        chunk.from_ms = m.paused_at_ms;
      }
    }
  }
  scheduleWaiting();
}

function showPaused(paused) {
  $("paused").hidden = !paused;
}

function retime(chunk, startsAtMs) {
  chunk.starts_at_ms = startsAtMs;
  if (chunk.voice) keepInStep(); else if (chunk.buffer && !chunk.done) schedule(chunk);
}

// Every tick: what plays stays on the timeline, what waits is re-timed (player.js); the beds likewise.
function keepInStep() {
  if (!ready()) return;
  scheduleWaiting();
  const local = nowMs();
  state.player.tick(state.chunks.values(), local);
  const now = socket.clock.serverMs(local), speech = [...state.speech.values()];
  for (const [id, layer] of state.beds) {
    if (layer.over) { layer.close(); state.beds.delete(id); continue; }
    layer.tick(now, state.pausedAtMs, speech, local);
  }
  forgetBedBuffers();
  layOutTrackDuck(now, local);
  showBed(now);
  showCurrent(now);
}

// ---- the bed ------------------------------------------------------------------------------

// The beds as the server says they are now: a layer per bed, kept (and told of changes) if it plays
// already, made if it is new, closed if the server no longer lists it.
function setBeds(playing, fading) {
  state.bedInfo = { playing, fading };
  if (!state.ctx) return; // not tuned in yet: made at the first tick after
  const listed = [playing, ...fading].filter(Boolean);
  for (const [id, layer] of state.beds) if (!listed.some((b) => b.bed_id === id)) { layer.close(); state.beds.delete(id); }
  for (const bed of listed) {
    const layer = state.beds.get(bed.bed_id);
    if (layer) layer.update(bed);
    else state.beds.set(bed.bed_id, new BedLayer(state.ctx, state.musicGain, timeline, bed, state.bedBuffers));
  }
}

// Decoded audio is large (a minute of stereo is 23 MB): keep a bed segment's only while a layer has it
// scheduled, playing or loading. A loop coming round again fetches it anew (from the HTTP cache: its URL
// never changes).
function forgetBedBuffers() {
  const wanted = new Set();
  for (const layer of state.beds.values()) for (const chunk of layer.playing.values()) wanted.add(chunk.chunk_id);
  for (const id of state.bedBuffers.keys()) if (!wanted.has(id)) state.bedBuffers.delete(id);
}

// Narration the bed ducks under: every placed chunk of a speech request.
function noteSpeech(requestId, chunk) {
  const kind = state.kinds.get(requestId) || "speech";
  if (kind === "track") return;
  const span = [chunk.starts_at_ms, chunk.starts_at_ms + chunk.duration_ms];
  state.speech.set(chunk.chunk_id, span);
  if (kind === "over") { state.overSpeech.set(chunk.chunk_id, [...span]); state.trackDuckLaidOut = -Infinity; }
  for (const layer of state.beds.values()) layer.relayOut();
}

// Tracks on the line dip under talk-over narration as beds dip under any narration.
function layOutTrackDuck(now, local) {
  if (local - state.trackDuckLaidOut < 1000) return;
  state.trackDuckLaidOut = local;
  const points = duckEnvelope([...state.overSpeech.values()], TALK_OVER_DUCK_DB);
  const t0 = state.ctx.currentTime + 0.05;
  automate(state.trackDuck.gain, t0, timeline.serverAt(t0), now + 8000, points.map(([t]) => t), (t) => gainAt(points, t), timeline);
}

// The gain the page gives the playing bed at server time t (volume, fades, ducking): for tests.
function bedGainAt(t) {
  const bed = state.bedInfo && state.bedInfo.playing;
  return bed ? levelAt(bed, t) * gainAt(duckEnvelope([...state.speech.values()], bed.duck_db), t) : 0;
}
state.bedGainAt = bedGainAt;

function showBed(now) {
  const bed = state.bedInfo && state.bedInfo.playing;
  const layer = bed && state.beds.get(bed.bed_id);
  const title = layer && layer.titleAt(now);
  $("bed").hidden = !bed;
  if (bed) $("bed").textContent = `Music: ${title || bed.source} (${bed.source})`;
}

function stop(chunk) {
  if (state.player) state.player.stop(chunk);
}

function dropChunks(ids) {
  for (const id of ids || []) { const c = state.chunks.get(id); if (c) { stop(c); state.chunks.delete(id); } }
  forgetSpeech(ids || []);
  renderCaptions();
}

// Skipped or cancelled: its audio stops at `stoppedAtMs` on the timeline, or at once if that is past, with
// a pause's fade; its captions go (a talk-over's too), and the music comes back up.
function stopRequest(requestId, stoppedAtMs) {
  const ids = [], t = ready() ? timeline.ctxAt(stoppedAtMs) : 0;
  for (const [id, c] of state.chunks) {
    if (c.request_id !== requestId) continue;
    if (c.voice) state.player.cut(c, t); else stop(c);
    state.chunks.delete(id);
    ids.push(id);
  }
  forgetSpeech(ids);
  endRequest(requestId);
}

// Speech that will not sound after all: the bed and the track no longer duck under it.
function forgetSpeech(ids) {
  for (const id of ids) { state.speech.delete(id); state.overSpeech.delete(id); }
  state.trackDuckLaidOut = -Infinity;
  for (const layer of state.beds.values()) layer.relayOut();
}

function forgetOld() {
  const cutoff = socket.clock.serverMs() - 60000; // long-finished chunks
  for (const [id, c] of state.chunks) if (c.starts_at_ms + c.duration_ms < cutoff) state.chunks.delete(id);
  const ducked = socket.clock.serverMs() - 5000; // narration the ducking no longer follows
  for (const [id, span] of state.speech) if (span[1] < ducked) state.speech.delete(id);
  for (const [id, span] of state.overSpeech) if (span[1] < ducked) state.overSpeech.delete(id);
  if (state.stats.scheduled.length > 500) state.stats.scheduled.splice(0, 250);
}

// How well this page keeps in step, for the server's metrics: the output glitches it noticed, the
// crossfades that put it back (after a glitch, or a clock estimate that stepped) and its moves to a
// larger output buffer since its last report, and its error now. Sent every REPORT_MS and after a
// glitch, but never sooner than REPORT_MIN_MS after the last one: the server refuses those, and
// what they counted would be lost.
const REPORT_MIN_MS = 5500; // the server takes one every 5 s (web/ws.py)
const reported = { glitches: 0, crossfades: 0, bufferMoves: 0, atMs: -Infinity, timer: null };
function report() {
  if (!state.output || !state.output.ready || !socket.live) return;
  const wait = reported.atMs + REPORT_MIN_MS - nowMs();
  if (wait > 0) {
    if (!reported.timer) reported.timer = setTimeout(() => { reported.timer = null; report(); }, wait);
    return;
  }
  const glitches = state.output.glitchCount, crossfades = state.player.crossfades, bufferMoves = state.bufferMoves;
  socket.send({
    type: "sync_report", glitches: glitches - reported.glitches, crossfades: crossfades - reported.crossfades,
    buffer_moves: bufferMoves - reported.bufferMoves,
    error_ms: Math.round(Math.max(-60000, Math.min(60000, state.player.errorMs)) * 100) / 100,
  });
  Object.assign(reported, { glitches, crossfades, bufferMoves, atMs: nowMs() });
}

// ---- display ----------------------------------------------------------------------------

function showConnection(kind, detail, why) {
  const text = { connecting: "Connecting…", live: "Live", refused: `Disconnected: ${detail}; ask for the current link`,
    reconnecting: `${why ? `Disconnected: ${why}` : "Connection lost"}; retrying in ${Math.ceil(detail / 1000)} s` }[kind];
  $("connection").textContent = text;
  $("connection").dataset.state = kind;
}

function showListeners(count) {
  state.listeners = count;
  $("listeners").textContent = `${count} listening`;
}

function showSync() {
  const clock = socket.clock, output = state.output;
  if (!clock.samples.length || !output) return;
  state.stats.sync.push([nowMs(), clock.offsetMs, clock.driftPpm, output.ratePpm, state.player.errorMs]);
  if (state.stats.sync.length > 1000) state.stats.sync.splice(0, 500);
  const parts = [`Clock offset ${clock.offsetMs.toFixed(1)} ms (± ${clock.errorBoundMs.toFixed(1)})`];
  if (clock.driftPpm) parts.push(`drift ${clock.driftPpm.toFixed(0)} ppm`);
  if (output.ready) parts.push(`speaker clock ${output.ratePpm >= 0 ? "+" : ""}${output.ratePpm.toFixed(0)} ppm`);
  parts.push(`in step within ${Math.abs(state.player.errorMs).toFixed(1)} ms`);
  const glitches = output.glitchCount;
  if (glitches) {
    const last = output.glitches[output.glitches.length - 1];
    const fixes = state.player.crossfades;
    parts.push(`${glitches} output glitch${glitches > 1 ? "es" : ""} (last ${Math.abs(last.shiftMs).toFixed(0)} ms, ` +
      `${new Date(last.atLocalMs).toLocaleTimeString()}); ${fixes} crossfade${fixes === 1 ? "" : "s"} back in step`);
  }
  if (state.next) parts.push("switching the audio buffer…");
  else if (state.outputBuffer.hint !== SMALL) parts.push(`larger audio buffer (+${state.outputBuffer.extraMs} ms)`);
  $("sync").textContent = parts.join(" · ");
  showStruggling(output);
}

function showStruggling(output) {
  const since = nowMs() - STRUGGLING_MS;
  const recent = output.glitches.filter((g) => g.atLocalMs >= since).length;
  const warning = $("output-warning");
  warning.hidden = recent < STRUGGLING_GLITCHES;
  if (!warning.hidden) {
    warning.textContent = `This device's audio keeps falling behind (${recent} glitches in the last ` +
      `${STRUGGLING_MS / 1000} s), so what you hear may be tens of milliseconds off the others. A busy computer ` +
      "is the usual cause: close other programs or tabs, or turn off battery saving." +
      (state.outputBuffer.hint === SMALL ? " A larger audio buffer (below) may ride it out." : "");
  }
}

function notice(text) {
  $("notice").textContent = text;
  setTimeout(() => { if ($("notice").textContent === text) $("notice").textContent = ""; }, 8000);
}

function describe(m) {
  return {
    id: m.request_id, text: m.text, kind: m.kind, title: m.title, artist: m.artist, durationMs: m.duration_ms,
    open: Boolean(m.open), // still being written: more sentences will come
  };
}

function clockTime(ms) {
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

// The sentence highlighted: the captioned request's latest to have started by the server's clock (what
// is heard now), kept through the gap after it. Read every tick, so re-timing cannot lose it.
function showCurrent(now) {
  const request = state.overRequest || state.request;
  if (state.pausedAtMs !== null) now = Math.min(now, state.pausedAtMs);
  let current = null;
  for (const c of state.chunks.values()) {
    if (request && c.request_id === request.id && c.starts_at_ms <= now && (!current || c.starts_at_ms > current.starts_at_ms)) current = c;
  }
  const id = current ? current.chunk_id : null;
  if (id !== state.current) { state.current = id; renderCaptions(); }
}

function renderCaptions() {
  const box = $("captions");
  const request = state.overRequest || state.request;
  if (!request) { box.replaceChildren(el("em", {}, "Nothing on the air")); return; }
  if (request.kind === "track") {
    box.replaceChildren(el("span", { className: "current" }, `\u266a ${state.request.title}`),
      state.request.artist ? el("span", { className: "meta" }, ` \u2014 ${state.request.artist}`) : "",
      state.request.durationMs ? el("span", { className: "meta" }, ` (${clockTime(state.request.durationMs)})`) : "");
    return;
  }
  const parts = [...state.chunks.values()].filter((c) => c.request_id === request.id).sort((a, b) => a.seq - b.seq);
  const writing = request.open ? [el("span", { id: "writing", className: "meta", title: "The narrator is still writing" }, "\u2026")] : [];
  if (!parts.length) { box.replaceChildren(request.text, ...writing); return; }
  box.replaceChildren(...parts.map((c) => el("span", { className: c.chunk_id === state.current ? "current" : "" }, c.text + " ")), ...writing);
}

// The server lists the next requests of a long queue, and how many wait in all.
function showQueue(queue, length = queue.length) {
  $("queue").replaceChildren(...queue.map((item) => el("li", {}, item.text,
    el("span", { className: "meta" }, ` ${queueLabel(item)}`))), ...more(length - queue.length));
  $("queue-empty").hidden = queue.length > 0;
}

function more(count) {
  return count > 0 ? [el("li", { className: "meta" }, `and ${count} more`)] : [];
}
