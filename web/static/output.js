// Where the audio output is, by the page's clock: local time (ms, as nowMs gives it) <-> AudioContext
// time (s) of the audio heard at that moment.
//
// getOutputTimestamp pairs a context time with the performance time it is heard at; each reading
// jitters with the audio callback (about a millisecond). The map is a straight line: its slope, the
// output clock's rate (it may run hundreds of ppm off the page's clock), fitted over the readings of
// the last RATE_WINDOW_MS; its place, the mean of the last OFFSET_WINDOW_MS of readings on that
// slope. Windows of time, whatever the number of readings, and no lag behind the output's rate, as
// a median of offsets would have.
//
// A reading far off the line, confirmed by the next one, is a discontinuity: the output stalled
// (an underrun, a device suspended for a moment) or skipped. The line restarts from the new
// readings, keeping its rate, and the glitch is counted; onGlitch tells the player to move what is
// playing to where it belongs.

import { nowMs } from "./sync.js";

const RATE_WINDOW_MS = 4000;    // readings kept for the rate
const OFFSET_WINDOW_MS = 1000;  // readings that place the line
const MIN_SPAN_MS = 1500;       // a rate is fitted over at least this much; before that the last one stays
const READY_SPAN_MS = 1000; // readings over this long before the map is used at all
const GLITCH_MS = 3;        // a reading this far off the line is suspect
const MAX_RATE_PPM = 2000;  // a fitted rate further off than this is noise
const GLITCHES_KEPT = 50;
const LOG_KEPT = 4500;      // readings kept for a closer look (bench/sync_output.py): three minutes

export class OutputClock {
  constructor(ctx) {
    this.ctx = ctx;
    this.readings = [];
    this.suspect = null;
    this.line = null; // { local, ctx, rate }: ctx = line.ctx + (local - line.local) * line.rate; rate in s per ms
    this.lastPerformance = -1;
    this.since = null; // local ms of the first reading since the output started or last jumped
    this.steady = false;
    this.glitches = []; // { atLocalMs, shiftMs } for the page's display and tests
    this.glitchCount = 0;
    this.log = []; // [local ms, context s, the line's context s at that local time (null before one)]
    this.onGlitch = () => {};
  }

  // Readings over READY_SPAN_MS first (an output's first moments are not yet steady); after a glitch
  // the line restarts from two readings, with the rate it had.
  get ready() { return this.steady; }

  span() { return this.readings[this.readings.length - 1].local - this.readings[0].local; }

  // How long (ms) the output has kept to one line: since its first reading or its last glitch.
  steadyForMs() { return this.since === null ? 0 : this.readings[this.readings.length - 1].local - this.since; }

  // Output clock against the page's clock, in ppm (positive: the output runs fast).
  get ratePpm() { return this.line ? (this.line.rate * 1000 - 1) * 1e6 : 0; }

  // Context time of the audio heard at local time `localMs`.
  ctxAt(localMs) {
    const line = this.line;
    return line.ctx + (localMs - line.local) * line.rate;
  }

  // Local time at which audio at context time `when` is heard.
  localAt(when) {
    const line = this.line;
    return line.local + (when - line.ctx) / line.rate;
  }

  read() {
    const reading = this.reading();
    if (!reading) return;
    this.log.push([reading.local, reading.ctx, this.line ? this.ctxAt(reading.local) : null]);
    if (this.log.length > LOG_KEPT) this.log.shift();
    if (this.line) {
      const offMs = (reading.ctx - this.ctxAt(reading.local)) * 1000;
      if (Math.abs(offMs) > GLITCH_MS) {
        if (this.suspect && Math.abs(offMs - this.suspect.offMs) < GLITCH_MS) this.jump(offMs, reading);
        else this.suspect = { offMs, reading }; // one reading may be a late callback: wait for the next
        return;
      }
    }
    this.suspect = null;
    if (this.since === null) this.since = reading.local;
    this.readings.push(reading);
    const cutoff = reading.local - RATE_WINDOW_MS;
    while (this.readings.length > 2 && this.readings[0].local < cutoff) this.readings.shift();
    this.fit();
  }

  reading() {
    const ctx = this.ctx;
    const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    if (ts && ts.performanceTime > 0) {
      if (ts.performanceTime === this.lastPerformance) return null; // no audio callback since: nothing new
      this.lastPerformance = ts.performanceTime;
      return { local: performance.timeOrigin + ts.performanceTime, ctx: ts.contextTime };
    }
    if (ts && ts.performanceTime === 0) return null; // the output has not started yet
    // No output timestamps in this browser: what is rendered now is heard after the output latency.
    const latency = ctx.outputLatency || ctx.baseLatency || 0;
    return { local: nowMs() + latency * 1000, ctx: ctx.currentTime };
  }

  jump(offMs, reading) {
    this.readings = [this.suspect.reading, reading];
    this.since = this.suspect.reading.local;
    this.suspect = null;
    this.fit();
    if (!this.steady) return; // the output is still settling after its start: nothing plays by it yet
    this.glitchCount += 1;
    this.glitches.push({ atLocalMs: reading.local, shiftMs: offMs });
    if (this.glitches.length > GLITCHES_KEPT) this.glitches.shift();
    this.onGlitch(offMs);
  }

  fit() {
    const readings = this.readings;
    let rate = this.line ? this.line.rate : 0.001;
    if (this.span() >= MIN_SPAN_MS) {
      const fitted = slope(readings);
      if (Math.abs(fitted * 1000 - 1) * 1e6 <= MAX_RATE_PPM) rate = fitted;
    }
    const newest = readings[readings.length - 1].local;
    const recent = readings.filter((r) => r.local >= newest - OFFSET_WINDOW_MS);
    const local = recent.reduce((a, r) => a + r.local, 0) / recent.length;
    const ctx = recent.reduce((a, r) => a + r.ctx - (r.local - local) * rate, 0) / recent.length;
    this.line = { local, ctx, rate };
    if (this.span() >= READY_SPAN_MS) this.steady = true;
  }

}

// Least-squares slope of context time against local time.
function slope(readings) {
  const n = readings.length;
  const meanLocal = readings.reduce((a, r) => a + r.local, 0) / n;
  const meanCtx = readings.reduce((a, r) => a + r.ctx, 0) / n;
  let num = 0, den = 0;
  for (const r of readings) { num += (r.local - meanLocal) * (r.ctx - meanCtx); den += (r.local - meanLocal) ** 2; }
  return num / den;
}
