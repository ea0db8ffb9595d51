// How large an output buffer the listener page asks its AudioContext for: the listener's choice.
//
// The browser's "playback" buffer is the default. A larger one (LARGE_S) rides out the repeated
// underruns of a moderately busy machine, at about 0.1 s more output latency; under heavy CPU load
// it did worse than the small one (docs/performance.md, "Underrun storms"), so the page does not
// move by itself: a listener whose audio keeps falling behind is offered it. The choice is kept in
// this browser with the extra latency it measured (`extraMs`), which the page adds to its readiness
// reports so that the lead that follows the audience covers it.

export const SMALL = "playback";
export const LARGE_S = 0.05;
const KEY = "broadcaster.outputBuffer";

// The larger buffer, if this browser chose it: { extraMs }, or null.
export function chosenLarge() {
  try {
    const kept = JSON.parse(localStorage.getItem(KEY) || "null");
    return kept && Number.isFinite(kept.extraMs) ? { extraMs: Math.max(0, Math.min(1000, kept.extraMs)) } : null;
  } catch (_) {
    return null; // storage disabled, or not ours
  }
}

export function chooseLarge(extraMs) {
  try { localStorage.setItem(KEY, JSON.stringify({ extraMs })); } catch (_) { /* storage disabled */ }
}

export function chooseSmall() {
  try { localStorage.removeItem(KEY); } catch (_) { /* storage disabled */ }
}
