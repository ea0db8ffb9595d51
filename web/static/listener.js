// Listener page: follows the channel's timeline over the WebSocket and plays each
// chunk with Web Audio at its starts_at_ms, mapped from the server clock.
"use strict";

const channel = decodeURIComponent(location.pathname.split("/")[2] || "");
const $ = (id) => document.getElementById(id);
const state = window.broadcasterState = { ctx: null, ws: null, offsetMs: 0, bestDelayMs: Infinity, chunks: new Map(),
                request: null, retryMs: 500, connectionId: null };

$("channel").textContent = channel;
$("tune").addEventListener("click", tuneIn);

function serverNowMs() { return Date.now() + state.offsetMs; }

function setStatus(text) { $("status").textContent = text; }

async function tuneIn() {
  state.ctx = state.ctx || new AudioContext();
  await state.ctx.resume();
  $("tune").hidden = true;
  connect();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/channels/${encodeURIComponent(channel)}`);
  state.ws = ws;
  setStatus("Connecting…");
  ws.onopen = () => { state.retryMs = 500; setStatus("Listening"); syncBurst(); };
  ws.onmessage = (event) => handle(JSON.parse(event.data));
  ws.onclose = () => {
    setStatus(`Disconnected; retrying in ${Math.round(state.retryMs / 1000)} s`);
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 15000);
  };
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function syncBurst() {
  for (let i = 0; i < 5; i++) setTimeout(() => send({ type: "time_sync", t0: Date.now() }), i * 100);
}
setInterval(() => send({ type: "time_sync", t0: Date.now() }), 10000);

function onTimeSync(m) {
  const t3 = Date.now();
  const delay = (t3 - m.t0) - (m.t2 - m.t1);
  // Keep the sample with the smallest round trip: its offset is the least wrong.
  if (delay <= state.bestDelayMs + 2) {
    state.bestDelayMs = Math.min(state.bestDelayMs, delay);
    state.offsetMs = ((m.t1 - m.t0) + (m.t2 - t3)) / 2;
  }
  $("sync").textContent = `clock offset ${state.offsetMs.toFixed(1)} ms, round trip ${delay} ms`;
}

function handle(m) {
  switch (m.type) {
    case "snapshot":
      state.connectionId = m.connection_id;
      for (const [id, c] of state.chunks) { stopChunk(c); state.chunks.delete(id); }
      showQueue(m.queue);
      if (m.now_playing) {
        state.request = { id: m.now_playing.request_id, text: m.now_playing.text };
        m.now_playing.chunks.forEach((c) => addChunk(m.now_playing.request_id, c));
      }
      renderCaptions();
      break;
    case "audio_stream_started":
      state.request = { id: m.request_id, text: m.text };
      renderCaptions();
      break;
    case "audio_chunk_ready": addChunk(m.request_id, m); break;
    case "timeline_shifted": {
      const c = state.chunks.get(m.chunk_id);
      if (c) { stopChunk(c); c.starts_at_ms = m.starts_at_ms; schedule(c); }
      break;
    }
    case "request_failed":
      for (const c of state.chunks.values()) if (c.request_id === m.request_id && c.starts_at_ms > serverNowMs()) stopChunk(c);
      setStatus(`A request failed: ${m.reason}`);
      break;
    case "playback_queue_updated": showQueue(m.queue); break;
    case "time_sync": onTimeSync(m); break;
    case "error": console.warn("server says:", m.message); break;
  }
}

async function addChunk(requestId, info) {
  if (state.chunks.has(info.chunk_id)) return;
  const chunk = { ...info, request_id: requestId, buffer: null, source: null };
  state.chunks.set(info.chunk_id, chunk);
  renderCaptions();
  const response = await fetch(info.url);
  chunk.buffer = await state.ctx.decodeAudioData(await response.arrayBuffer());
  schedule(chunk);
}

function schedule(chunk) {
  if (!chunk.buffer || !state.ctx) return;
  const ctx = state.ctx;
  const latency = ctx.outputLatency || ctx.baseLatency || 0;
  const startsIn = (chunk.starts_at_ms - serverNowMs()) / 1000 - latency;
  const offset = Math.max(0, -startsIn);
  if (offset >= chunk.buffer.duration) return; // already over: a late joiner skips it
  const source = ctx.createBufferSource();
  source.buffer = chunk.buffer;
  source.connect(ctx.destination);
  source.onended = () => {
    if (chunk.source === source && offset < chunk.buffer.duration) send({ type: "audio_played", chunk_id: chunk.chunk_id });
  };
  source.start(ctx.currentTime + Math.max(0, startsIn), offset);
  chunk.source = source;
  const highlightIn = Math.max(0, startsIn * 1000);
  setTimeout(() => { state.current = chunk.chunk_id; renderCaptions(); }, highlightIn);
}

function stopChunk(chunk) {
  if (chunk.source) { const s = chunk.source; chunk.source = null; try { s.stop(); } catch (_) {} }
}

function renderCaptions() {
  const box = $("captions");
  if (!state.request) { box.innerHTML = "<em>Nothing on the air</em>"; return; }
  const parts = [...state.chunks.values()].filter((c) => c.request_id === state.request.id).sort((a, b) => a.seq - b.seq);
  box.replaceChildren(...parts.map((c) => {
    const span = document.createElement("span");
    span.textContent = c.text + " ";
    if (c.chunk_id === state.current) span.className = "current";
    return span;
  }));
  if (!parts.length) box.textContent = state.request.text;
}

function showQueue(queue) {
  $("queue").replaceChildren(...queue.map((item) => {
    const li = document.createElement("li");
    li.textContent = `${item.text} — ${item.status} (${item.chunks_ready}/${item.chunks_total})`;
    return li;
  }));
}

// Forget chunks that ended a minute ago so a page left open all day stays small.
setInterval(() => {
  const cutoff = serverNowMs() - 60000;
  for (const [id, c] of state.chunks) if (c.starts_at_ms + c.duration_ms < cutoff) state.chunks.delete(id);
}, 30000);
