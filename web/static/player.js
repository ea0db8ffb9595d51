// Plays chunks on the server's timeline with Web Audio, and keeps them there while they play.
//
// Each chunk is a buffer source through its own gain node, started at the context time its
// starts_at_ms maps to (a late joiner's fades in mid-chunk). Then, every tick:
// - it plays at the rate that makes one second of its audio last one second of server time: the
//   output clock and the page's clock both run a little off (OutputClock, ClockSync);
// - a small error (under CROSSFADE_MS) is taken out by playing slightly faster or slower, in
//   proportion to the error, so it decays smoothly and never overshoots; at most MAX_SLEW off, which
//   is not heard in speech or music;
// - a larger one (the output stalled, the clock estimate stepped) is fixed at once by a crossfade of
//   FADE_S to the right place: no hard cut, no click.
// A chunk not yet sounding is simply re-timed. The player counts what it corrected; the page shows
// it and reports it to the server. A pause (or a skip) cuts what plays at its moment with a short fade
// ending there; after the resume a cut chunk (its `from_ms` set) goes on from the sample it stopped at.

const MARGIN_S = 0.03;      // rate changes are scheduled this far ahead of the audio thread
// A source started at a time the audio thread has already rendered starts at once, late by the
// difference, and nothing tells the page: starts are scheduled further ahead, the more so while the
// page's own timers run late (a busy machine), by how late they ran lately.
const START_MARGIN_S = 0.05;
const MAX_START_MARGIN_S = 0.3;
const LATENESS_WINDOW_MS = 5000;
const FADE_S = 0.01;        // crossfades, fade-ins, and the fade into a pause
const CROSSFADE_MS = 8;     // errors above this are fixed by a crossfade, below it by the rate
const SLEW_S = 0.4;         // time constant of a small correction
const MAX_SLEW = 0.004;     // at most 0.4% fast or slow (7 cents)
const RETIME_MS = 0.5;      // a chunk not yet sounding is re-timed for any change above this
const RATE_STEP = 2e-6;     // smaller rate changes than this are not worth an automation event
const CORRECTIONS_KEPT = 100;
const TRACE_KEPT = 1500;

export class Player {
  // `timeline`: ctxAt(serverMs) -> context time it sounds at; serverAt(when) -> server ms of context time
  // `when`; rate() -> buffer seconds per context second that keeps audio on server time.
  constructor(ctx, destination, timeline) {
    this.ctx = ctx;
    this.destination = destination;
    this.timeline = timeline;
    this.crossfades = 0;
    this.corrections = []; // { atLocalMs, kind, errorMs } for the display and tests
    this.errorMs = 0; // the playing chunk's error at the last tick (positive: ahead of the timeline)
    this.trace = []; // [local ms, error ms, chunk id] of recent ticks, for a closer look (bench/sync_output.py)
    this.ticks = []; // [local ms] of recent ticks: how late the page's timers run
    this.notBefore = 0; // context time no start is scheduled before (a handover from another context)
  }

  // How far ahead to schedule a start now: by the second longest wait between ticks lately. One long
  // task on the page (a narration's captions) holds a timer up once, and cannot stall the start being
  // scheduled, which runs to completion; a busy machine, which can, holds them up again and again.
  startMargin() {
    const ticks = this.ticks;
    if (ticks.length < 3) return START_MARGIN_S;
    const gaps = [];
    for (let i = 1; i < ticks.length; i++) gaps.push(ticks[i] - ticks[i - 1]);
    gaps.sort((a, b) => b - a);
    const expected = (ticks[ticks.length - 1] - ticks[0]) / (ticks.length - 1);
    return Math.min(MAX_START_MARGIN_S, START_MARGIN_S + 1.5 * Math.max(0, gaps[1] - expected) / 1000);
  }

  // Start (or re-time) a chunk: { buffer, starts_at_ms }. Returns false if it is already over.
  play(chunk) {
    this.stop(chunk);
    const ctx = this.ctx, tl = this.timeline;
    const earliest = Math.max(ctx.currentTime + this.startMargin(), this.notBefore);
    const from = soundsFrom(chunk);
    const when = tl.ctxAt(from);
    const at = Math.max(when, earliest);
    const pos = ((at > when ? tl.serverAt(at) : from) - chunk.starts_at_ms) / 1000;
    if (pos >= chunk.buffer.duration) return false;
    chunk.voice = this.voice(chunk, at, pos, pos > 0.001);
    return true;
  }

  // A pause or a skip: the chunk's audio fades out to nothing at context time t and stops there; if t
  // is past, it fades out at once (a hard stop would click). It is no longer the chunk's voice: nothing
  // keeps it in step, and its end is not the chunk's end.
  cut(chunk, t) {
    const voice = chunk.voice;
    if (!voice) return;
    chunk.voice = null;
    voice.source.onended = null;
    const now = this.ctx.currentTime;
    if (voice.segments[0].t >= Math.max(t, now)) { try { voice.source.stop(); } catch (_) { /* never started */ } return; }
    const fadeFrom = Math.max(now, t - FADE_S);
    fadeOut(voice, fadeFrom, Math.max(t, fadeFrom + FADE_S));
  }

  // Handed over to a player on another AudioContext: the chunk's audio fades out over FADE_S from
  // context time t (when the other starts it) and stops. Its end is not acknowledged here.
  release(chunk, t) {
    const voice = chunk.voice;
    if (!voice) return;
    chunk.voice = null;
    voice.source.onended = null;
    t = Math.max(t, this.ctx.currentTime + MARGIN_S);
    if (voice.segments[0].t >= t) { try { voice.source.stop(); } catch (_) { /* never started */ } return; }
    fadeOut(voice, t, t + FADE_S);
  }

  stop(chunk) {
    const voice = chunk.voice;
    chunk.voice = null;
    if (voice) { try { voice.source.stop(); } catch (_) { /* never started */ } }
  }

  // Keep every chunk in place; called every few tens of milliseconds.
  tick(chunks, nowLocalMs) {
    this.ticks.push(nowLocalMs);
    while (this.ticks.length > 2 && this.ticks[0] < nowLocalMs - LATENESS_WINDOW_MS) this.ticks.shift();
    const t = this.ctx.currentTime + MARGIN_S;
    for (const chunk of chunks) {
      const voice = chunk.voice;
      if (!voice || voice.fading) continue;
      const start = voice.segments[0];
      if (start.t > t) { // not sounding yet: started from its beginning, it is simply re-timed
        if (start.pos === 0 && Math.abs(this.timeline.ctxAt(chunk.starts_at_ms) - start.t) * 1000 > RETIME_MS) this.play(chunk);
        continue;
      }
      const position = positionAt(voice, t);
      if (position >= chunk.buffer.duration) continue; // its end is rendered already
      // Also when the timeline says it has ended: the rest, heard late, would run into the silence
      // between sentences or the next one, so a large error fades it out (crossfade, below).
      const error = position - (this.timeline.serverAt(t) - chunk.starts_at_ms) / 1000;
      this.errorMs = error * 1000;
      this.trace.push([nowLocalMs, this.errorMs, chunk.chunk_id]);
      if (this.trace.length > TRACE_KEPT) this.trace.shift();
      if (Math.abs(error) * 1000 > CROSSFADE_MS) this.crossfade(chunk, nowLocalMs);
      else this.slew(voice, t, error);
    }
  }

  crossfade(chunk, nowLocalMs) {
    const margin = this.startMargin();
    const t = this.ctx.currentTime + margin;
    const due = (this.timeline.serverAt(t) - chunk.starts_at_ms) / 1000;
    const old = chunk.voice;
    old.gain.gain.setValueAtTime(1, t);
    old.gain.gain.linearRampToValueAtTime(0, t + FADE_S);
    old.source.stop(t + FADE_S);
    old.fading = true;
    if (due < chunk.buffer.duration) { // else it fades out and ends (and is acknowledged) there
      old.source.onended = null;
      chunk.voice = this.voice(chunk, t, due, true);
    }
    this.crossfades += 1;
    this.note({ atLocalMs: nowLocalMs, kind: "crossfade", errorMs: this.errorMs, marginMs: margin * 1000 });
  }

  slew(voice, t, error) {
    const correction = Math.max(-MAX_SLEW, Math.min(MAX_SLEW, error / SLEW_S));
    const rate = this.timeline.rate() * (1 - correction);
    const last = voice.segments[voice.segments.length - 1];
    if (Math.abs(rate - last.rate) < RATE_STEP) return;
    voice.source.playbackRate.setValueAtTime(rate, t);
    voice.segments.push({ t, pos: positionAt(voice, t), rate });
    if (voice.segments.length > 8) voice.segments.splice(1, voice.segments.length - 8);
  }

  voice(chunk, at, pos, fadeIn) {
    const ctx = this.ctx;
    const source = ctx.createBufferSource();
    const gain = ctx.createGain();
    source.buffer = chunk.buffer;
    const rate = this.timeline.rate();
    source.playbackRate.value = rate;
    source.connect(gain);
    gain.connect(chunk.destination || this.destination); // a track goes to the music layer
    if (fadeIn) {
      gain.gain.setValueAtTime(0, at);
      gain.gain.linearRampToValueAtTime(1, at + FADE_S);
    }
    source.onended = () => { if (chunk.voice && chunk.voice.source === source) { chunk.voice = null; chunk.onEnded(); } };
    source.start(at, pos);
    return { source, gain, segments: [{ t: at, pos, rate }] };
  }

  note(correction) {
    this.corrections.push(correction);
    if (this.corrections.length > CORRECTIONS_KEPT) this.corrections.shift();
  }
}

function fadeOut(voice, from, to) {
  voice.gain.gain.cancelScheduledValues(from);
  voice.gain.gain.setValueAtTime(1, from);
  voice.gain.gain.linearRampToValueAtTime(0, to);
  voice.source.stop(to);
}

// When a chunk is heard (again) from, in server ms: its start, or after a pause that cut it, the resume.
export function soundsFrom(chunk) {
  return chunk.from_ms == null ? chunk.starts_at_ms : Math.max(chunk.starts_at_ms, chunk.from_ms);
}

// Where in its buffer (s) a voice is at context time t, from the rate changes made so far.
function positionAt(voice, t) {
  const segments = voice.segments;
  let i = segments.length - 1;
  while (i > 0 && segments[i].t > t) i--;
  const s = segments[i];
  return s.pos + (t - s.t) * s.rate;
}
