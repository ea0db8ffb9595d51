// The bed: music or ambience looping under the line (docs/protocol.md, "Bed").
//
// Where a bed is at any server time follows from its origin and its segments' lengths, so the page
// works out which segment repetitions sound over the next few seconds, fetches each segment once
// and plays every repetition through a Player of its own (player.js: the same clocks, the same
// corrections as the voice). Its gain is the product of two automated GainNodes: its volume and
// fades, and the ducking under narration. Both are piecewise linear in server time, computed from
// what the server announced exactly as broadcaster/core/bed.py computes them for live.mp3, so every
// page applies the same gain at the same moment; they are rescheduled as time maps onto the
// AudioContext anew (RESCHEDULE_MS) and whenever narration is announced.

import { withKey } from "./channel.js";
import { Player, soundsFrom } from "./player.js";

export const ATTACK_MS = 150;
export const HOLD_MS = 400;
export const RELEASE_MS = 600;
const AHEAD_MS = 4000;      // segment repetitions are scheduled this far ahead
const RESCHEDULE_MS = 1000; // gain automation is laid out again this often
const GAIN_AHEAD_MS = 8000; // and this far ahead

// (ms, gain) points of the ducking, linear between, 1 outside: as duck_envelope in core/bed.py.
export function duckEnvelope(speech, duckDb) {
  const level = 10 ** (duckDb / 20);
  const spans = [];
  for (const [start, end] of [...speech].sort((a, b) => a[0] - b[0] || a[1] - b[1])) {
    const down = start - ATTACK_MS, up = end + HOLD_MS;
    const last = spans[spans.length - 1];
    if (last && down <= last[1] + RELEASE_MS) last[1] = Math.max(last[1], up);
    else spans.push([down, up]);
  }
  return spans.flatMap(([down, up]) => [[down, 1], [down + ATTACK_MS, level], [up, level], [up + RELEASE_MS, 1]]);
}

export function gainAt(points, t) {
  if (!points.length || t <= points[0][0]) return 1;
  for (let i = 1; i < points.length; i++) {
    const [t1, g1] = points[i];
    if (t < t1) {
      const [t0, g0] = points[i - 1];
      return t1 === t0 ? g0 : g0 + (g1 - g0) * (t - t0) / (t1 - t0);
    }
  }
  return points[points.length - 1][1];
}

function ramp(t, at, length, before, after) {
  if (t <= at) return before;
  if (length <= 0 || t >= at + length) return after;
  return before + (after - before) * (t - at) / length;
}

// Its volume and fades at server time t, as Bed.fade_at (times its volume).
export function levelAt(bed, t) {
  let gain = bed.volume * ramp(t, bed.fades_in_at_ms, bed.fade_in_ms, 0, 1);
  if (bed.fades_out_at_ms != null) gain *= ramp(t, bed.fades_out_at_ms, bed.fade_out_ms, 1, 0);
  return gain;
}

function endsAt(bed) {
  return bed.fades_out_at_ms == null ? Infinity : bed.fades_out_at_ms + bed.fade_out_ms;
}

// Segment repetitions heard between start and end: { chunk_id, url, starts_at_ms, duration_ms, title }.
export function sounding(bed, start, end) {
  const out = [];
  const from = bed.heard_from_ms == null ? bed.origin_ms : Math.max(bed.origin_ms, bed.heard_from_ms);
  start = Math.max(start, from);
  end = Math.min(end, endsAt(bed));
  if (bed.loop_ms <= 0 || start >= end) return out;
  let at = bed.origin_ms + Math.floor((start - bed.origin_ms) / bed.loop_ms) * bed.loop_ms;
  while (at < end) {
    for (const track of bed.tracks) {
      for (const s of track.segments) {
        if (at + s.duration_ms > start && at < end) {
          out.push({ chunk_id: s.chunk_id, url: s.url, starts_at_ms: at, duration_ms: s.duration_ms, title: track.title });
        }
        at += s.duration_ms;
      }
    }
  }
  return out;
}

// One bed as this page plays it.
export class BedLayer {
  constructor(ctx, destination, timeline, bed, buffers) {
    this.ctx = ctx;
    this.timeline = timeline;
    this.bed = bed;
    this.buffers = buffers; // chunk_id -> Promise<AudioBuffer>, shared by every bed of the page
    this.level = ctx.createGain();
    this.duck = ctx.createGain();
    this.level.gain.value = 0;
    this.level.connect(this.duck);
    this.duck.connect(destination);
    this.player = new Player(ctx, this.level, timeline);
    this.playing = new Map(); // `${chunk_id}@${starts_at_ms}` -> a chunk the player plays
    this.laidOutAt = -Infinity;
    this.heardFrom = null; // after a resume that moved nothing: what was cut goes on from the pause's moment
  }

  // The server's word on this bed changed. A pause moved it: what was scheduled is dropped and made
  // again from the new times; a fade-out (or anything else) only changes the gains.
  update(bed) {
    const moved = bed.origin_ms !== this.bed.origin_ms || bed.heard_from_ms !== this.bed.heard_from_ms;
    this.bed = bed;
    if (moved) this.reset(null);
    this.relayOut();
  }

  reset(heardFrom) {
    for (const chunk of this.playing.values()) this.player.stop(chunk);
    this.playing.clear();
    this.heardFrom = heardFrom;
  }

  relayOut() { this.laidOutAt = -Infinity; }

  get over() { return endsAt(this.bed) < this.timeline.serverNow() - 1000; }

  // What sounds now (for the page's display), or null.
  titleAt(t) {
    const now = sounding(this.bed, t, t + 1)[0];
    return now ? now.title : null;
  }

  // Every tick: schedule what comes within AHEAD_MS, keep what plays in step, forget what has ended.
  tick(now, pausedAtMs, speech, nowLocalMs) {
    const horizon = pausedAtMs == null ? now + AHEAD_MS : Math.min(now + AHEAD_MS, pausedAtMs);
    for (const s of sounding(this.bed, now, horizon)) {
      const key = `${s.chunk_id}@${s.starts_at_ms}`;
      if (this.playing.has(key)) continue;
      const from = Math.max(this.bed.heard_from_ms ?? -Infinity, this.heardFrom ?? -Infinity);
      const chunk = { ...s, from_ms: Number.isFinite(from) ? from : null, voice: null, buffer: null, onEnded: () => {} };
      this.playing.set(key, chunk);
      this.buffer(s).then((buffer) => { chunk.buffer = buffer; this.start(chunk, pausedAtMs); }, () => {});
    }
    for (const [key, chunk] of this.playing) {
      if (chunk.starts_at_ms + chunk.duration_ms < now - 1000) { this.player.stop(chunk); this.playing.delete(key); }
    }
    this.player.tick([...this.playing.values()].filter((c) => c.voice), nowLocalMs);
    if (nowLocalMs - this.laidOutAt >= RESCHEDULE_MS) this.layOut(now, speech, nowLocalMs);
  }

  start(chunk, pausedAtMs) {
    if (!chunk.buffer || chunk.voice || !this.playing.has(`${chunk.chunk_id}@${chunk.starts_at_ms}`)) return;
    if (pausedAtMs != null && soundsFrom(chunk) >= pausedAtMs) return;
    if (!this.player.play(chunk)) return;
    if (pausedAtMs != null) this.player.cut(chunk, this.timeline.ctxAt(pausedAtMs));
  }

  buffer(s) {
    if (!this.buffers.has(s.chunk_id)) {
      const loading = fetch(withKey(s.url))
        .then((r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); return r.arrayBuffer(); })
        .then((data) => this.ctx.decodeAudioData(data));
      loading.catch(() => this.buffers.delete(s.chunk_id)); // a later tick tries again
      this.buffers.set(s.chunk_id, loading);
    }
    return this.buffers.get(s.chunk_id);
  }

  // The gains from now to GAIN_AHEAD_MS, as automation: exact ramps between the envelopes' points.
  layOut(now, speech, nowLocalMs) {
    this.laidOutAt = nowLocalMs;
    const bed = this.bed, until = now + GAIN_AHEAD_MS;
    const t0 = this.ctx.currentTime + 0.05;
    const from = this.timeline.serverAt(t0);
    const fades = [bed.fades_in_at_ms, bed.fades_in_at_ms + bed.fade_in_ms];
    if (bed.fades_out_at_ms != null) fades.push(bed.fades_out_at_ms, bed.fades_out_at_ms + bed.fade_out_ms);
    automate(this.level.gain, t0, from, until, fades, (t) => levelAt(bed, t), this.timeline);
    const points = duckEnvelope(speech, bed.duck_db);
    automate(this.duck.gain, t0, from, until, points.map(([t]) => t), (t) => gainAt(points, t), this.timeline);
  }

  // After a pause: nothing more of it until the resume; what sounds stops at the pause's moment.
  cut(pausedAtMs) {
    const t = this.timeline.ctxAt(pausedAtMs);
    for (const chunk of this.playing.values()) this.player.cut(chunk, t);
  }

  // Over, or handed over to a layer on another AudioContext that takes it up at context time `at`:
  // what plays fades out from then.
  close(at = this.ctx.currentTime) {
    for (const chunk of this.playing.values()) this.player.release(chunk, at);
    this.playing.clear();
    setTimeout(() => { this.duck.disconnect(); }, Math.max(0, (at - this.ctx.currentTime) * 1000) + 200);
  }
}

// Lays a piecewise-linear function of server time onto an AudioParam from context time t0 (server
// time `from`): its value there, then a linear ramp to each breakpoint up to `until`.
export function automate(param, t0, from, until, breakpoints, valueAt, timeline) {
  param.cancelScheduledValues(t0);
  param.setValueAtTime(valueAt(from), t0);
  const ahead = [...new Set(breakpoints)].filter((t) => t > from && t <= until).sort((a, b) => a - b);
  for (const t of ahead) param.linearRampToValueAtTime(valueAt(t), timeline.ctxAt(t));
}
