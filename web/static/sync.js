// Clock sync: estimates server time from time_sync round trips (NTP-style).
//
// Each sample gives offset = ((t1 - t0) + (t2 - t3)) / 2 and delay = (t3 - t0) - (t2 - t1),
// where t0/t3 are our send/receive times and t1/t2 the server's. The true offset lies within
// delay / 2 of a sample's estimate, so low-delay samples are the trustworthy ones: we keep a
// window of recent samples, take the median offset of the lowest-delay few, and fit a slope
// through those over time to track drift between the two clocks.

export const nowMs = () => performance.timeOrigin + performance.now();

const WINDOW = 64;      // samples kept
const BEST = 5;         // lowest-delay samples that decide the offset
const MAX_AGE_MS = 120000;

export class ClockSync {
  constructor() {
    this.samples = [];
    this.offsetMs = 0;
    this.driftPpm = 0;
    this.errorBoundMs = Infinity;
  }

  // Start over: the local clock stood still while the machine slept, so every sample so far is off by
  // the sleep (and, its round trip short, would still be chosen).
  reset() {
    this.samples = [];
    this.errorBoundMs = Infinity;
  }

  // `precise`: t1 and t2 to the microsecond; else in whole milliseconds, rounded down.
  add(t0, t1, t2, t3, precise = false) {
    const delay = (t3 - t0) - (t2 - t1);
    if (delay < 0) return;
    const rounding = precise ? 0 : 0.5; // whole milliseconds rounded down: +0.5 removes that bias
    this.precise = precise;
    this.samples.push({ at: t3, offset: ((t1 - t0) + (t2 - t3)) / 2 + rounding, delay });
    const cutoff = t3 - MAX_AGE_MS;
    this.samples = this.samples.filter((s) => s.at >= cutoff).slice(-WINDOW);
    this.update();
  }

  update() {
    const best = [...this.samples].sort((a, b) => a.delay - b.delay).slice(0, BEST);
    const offsets = best.map((s) => s.offset).sort((a, b) => a - b);
    this.offsetMs = offsets[Math.floor(offsets.length / 2)];
    this.errorBoundMs = best[0].delay / 2 + (this.precise ? 0 : 0.5); // half the round trip, and the server's rounding
    this.driftPpm = slopePpm(best);
    this.anchor = best.reduce((a, s) => a + s.at, 0) / best.length;
  }

  // Server time now (or at local time `local`), extrapolating drift from the samples' mean time.
  serverMs(local = nowMs()) {
    if (!this.samples.length) return local;
    return local + this.offsetMs + (local - this.anchor) * this.driftPpm / 1e6;
  }

  localMs(server) {
    return server - (this.serverMs(server) - server);
  }
}

function slopePpm(samples) {
  if (samples.length < 3) return 0;
  const span = Math.max(...samples.map((s) => s.at)) - Math.min(...samples.map((s) => s.at));
  if (span < 30000) return 0; // too short to tell drift from noise
  const mx = samples.reduce((a, s) => a + s.at, 0) / samples.length;
  const my = samples.reduce((a, s) => a + s.offset, 0) / samples.length;
  let num = 0, den = 0;
  for (const s of samples) { num += (s.at - mx) * (s.offset - my); den += (s.at - mx) ** 2; }
  return den ? (num / den) * 1e6 : 0;
}
