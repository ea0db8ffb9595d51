"""The listener page's output clock (web/static/output.js) fed made-up output readings.

A page learns where its audio output is from the browser's output timestamps: pairs of a context
time and the moment it is heard. Here a stand-in for the AudioContext hands the page's OutputClock
readings of an output whose clock runs at a chosen rate against the page's, with the jitter of a
real audio callback, so the line it keeps can be compared with the truth at every reading. The
recorded tests (test_sync_output.py) run on whatever clock the sound rig has; these choose it.
"""

import random

import numpy as np
import pytest

QUANTUM_S = 512 / 48_000  # a reading per audio callback
JITTER_MS = 0.5  # each reading's moment is off by up to this (the callback's own timing)

FEED = """
async ({ readings }) => {
  const { OutputClock } = await import("/static/output.js");
  let current = { contextTime: 0, performanceTime: 0 };
  const clock = new OutputClock({ getOutputTimestamp: () => current });
  const out = [];
  for (const [performanceTime, contextTime, probeMs] of readings) {
    current = { contextTime, performanceTime };
    clock.read();
    const local = performance.timeOrigin + probeMs;
    out.push([clock.ready ? clock.ctxAt(local) : null, clock.glitchCount, clock.ratePpm]);
  }
  return { out, glitches: clock.glitches };
}
"""


class Output:
    """An audio output as its callbacks see it: each renders a quantum of context time and is heard
    at a page time that follows from the output clock's rate (ppm, positive when it runs fast); the
    rate may change, and the output may stall (no callbacks while page time goes on)."""

    def __init__(self, ppm: float, seed: int = 7):
        self.ppm = ppm
        self.random = random.Random(seed)
        self.ctx_s = 0.0
        self.at_ms = 1000.0  # page time of the last callback
        self.lost_s = 0.0  # context time the output has fallen behind by stalls

    def run(self, seconds: float, ppm: float | None = None) -> list[tuple[float, float, float]]:
        """Callbacks for `seconds` of page time: (reading's page time, context time, true page time)."""
        self.ppm = self.ppm if ppm is None else ppm
        readings = []
        end_ms = self.at_ms + seconds * 1000
        while self.at_ms < end_ms:
            self.ctx_s += QUANTUM_S
            self.at_ms += QUANTUM_S * 1000 / (1 + self.ppm * 1e-6)
            jitter = self.random.uniform(-JITTER_MS, JITTER_MS)
            readings.append((self.at_ms + jitter, self.ctx_s, self.at_ms))
        return readings

    def stall(self, ms: float) -> None:
        """No callbacks for `ms`; the context then goes on from where it stopped."""
        self.at_ms += ms


@pytest.fixture
async def feed(browser, server):
    page = await browser.new_page(bypass_csp=True)
    await page.goto(f"{server.base_url}/c/{server.channel}")

    async def run(readings: list[tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """Per reading: how far (ms) the clock's line is from the truth at the reading's true moment
        (nan before it is ready), the glitches counted so far, the rate it has found (ppm)."""
        result = await page.evaluate(FEED, {"readings": [list(r) for r in readings]})
        ctx_at = np.array([np.nan if row[0] is None else row[0] for row in result["out"]])
        truth = np.array([ctx for _, ctx, _ in readings])
        counts = np.array([row[1] for row in result["out"]])
        ppm = np.array([row[2] for row in result["out"]])
        return (ctx_at - truth) * 1000, counts, ppm, result["glitches"]

    yield run
    await page.close()


async def test_it_follows_an_output_clock_hundreds_of_ppm_off(feed):
    output = Output(ppm=800)
    readings = output.run(8)
    error_ms, counts, ppm, _ = await feed(readings)
    settled = slice(len(readings) * 5 // 8, None)  # from 5 s on
    assert np.nanmax(np.abs(error_ms[settled])) < 0.12, "the line is off an output running 800 ppm fast"
    assert abs(ppm[-1] - 800) < 40, f"found {ppm[-1]:.0f} ppm for an output 800 ppm fast"
    assert counts[-1] == 0, "jitter counted as glitches"


async def test_it_follows_the_output_clock_when_its_rate_changes(feed):
    output = Output(ppm=800)
    before = output.run(6)
    after = output.run(6, ppm=100)
    error_ms, counts, ppm, _ = await feed(before + after)
    turning = slice(len(before), None)
    assert np.nanmax(np.abs(error_ms[turning])) < 1.0, "it fell behind while the rate changed"
    settled = slice(len(before) + len(after) * 9 // 12, None)  # 4.5 s after the change
    assert np.nanmax(np.abs(error_ms[settled])) < 0.12, "the line did not settle on the new rate"
    assert abs(ppm[-1] - 100) < 40, f"found {ppm[-1]:.0f} ppm after the output slowed to 100 ppm"
    assert counts[-1] == 0, "a change of rate counted as a glitch"


async def test_an_output_stall_is_a_glitch_seen_at_once_and_the_line_moves_to_it(feed):
    output = Output(ppm=800)
    before = output.run(4)
    output.stall(150)
    after = output.run(3)
    error_ms, counts, _, glitches = await feed(before + after)
    assert counts[len(before) - 1] == 0
    assert counts[len(before) + 1] == 1, "the stall was not counted by the second reading after it"
    assert counts[-1] == 1, "one stall counted more than once"
    assert abs(glitches[0]["shiftMs"] + 150) < 1.5, f"the stall was seen as a shift of {glitches[0]['shiftMs']} ms"
    soon = slice(len(before) + 2, len(before) + 12)  # the next 100 ms
    assert np.nanmax(np.abs(error_ms[soon])) < 1.0, "the line did not move to the output's new place"
    settled = slice(len(before) + len(after) // 2, None)
    assert np.nanmax(np.abs(error_ms[settled])) < 0.12, "the line did not settle after the stall"


async def test_one_late_callback_is_not_a_glitch(feed):
    output = Output(ppm=-300)
    readings = output.run(6)
    at = len(readings) // 2
    page_ms, ctx_s, true_ms = readings[at]
    readings[at] = (page_ms + 6, ctx_s, true_ms)  # one reading 6 ms late, the next on time again
    error_ms, counts, _, _ = await feed(readings)
    assert counts[-1] == 0, "a single late reading was counted as a glitch"
    assert np.nanmax(np.abs(error_ms[at:])) < 0.15, "a single late reading moved the line"
