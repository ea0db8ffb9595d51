// How large an output buffer the listener page asks its AudioContext for.
//
// A page starts with the browser's "playback" buffer: the smallest latency that is steady on most
// machines. On a busy one the output can underrun again and again for seconds, and then what is heard
// drifts tens of ms off while the output's own timestamps hardly show it (docs/performance.md,
// "Underrun storms"); a larger buffer rides those out. So a page whose output glitches MOVE_GLITCHES
// times within MOVE_WITHIN_MS moves to a LARGE_S buffer, and the browser remembers that for
// REMEMBER_MS, so its next visit starts there. The price is output latency: the page tells the server
// how much more it has (`extraMs`), so the lead that follows the audience covers it.

import { nowMs } from "./sync.js";

export const SMALL = "playback";
export const LARGE_S = 0.05;
const MOVE_GLITCHES = 3;
const MOVE_WITHIN_MS = 10000;
const REMEMBER_MS = 7 * 24 * 3600 * 1000;
const KEY = "broadcaster.outputBuffer";

// The larger buffer this browser moved to lately, as { extraMs, atMs }, or null.
export function rememberedLarge(now = nowMs()) {
  try {
    const kept = JSON.parse(localStorage.getItem(KEY) || "null");
    const fresh = kept && Number.isFinite(kept.extraMs) && Number.isFinite(kept.atMs) && now - kept.atMs < REMEMBER_MS;
    return fresh ? { extraMs: Math.max(0, Math.min(1000, kept.extraMs)), atMs: kept.atMs } : null;
  } catch (_) {
    return null; // storage disabled, or not ours
  }
}

export function rememberLarge(extraMs, now = nowMs()) {
  try { localStorage.setItem(KEY, JSON.stringify({ extraMs, atMs: now })); } catch (_) { /* storage disabled */ }
}

// Whether the output's recent glitches ({ atLocalMs }) call for the larger buffer.
export function storming(glitches, now = nowMs()) {
  return glitches.filter((g) => g.atLocalMs >= now - MOVE_WITHIN_MS).length >= MOVE_GLITCHES;
}
