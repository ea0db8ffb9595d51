"""The listener page's player (web/static/player.js) rendered offline by Chromium's own Web Audio.

An OfflineAudioContext renders faster than real time and stops at given context times, so the
player's ticks run at exact moments and the output can be checked sample by sample. Each chunk's
samples are a ramp (a sample's value says where in the chunk it is), so the rendered value says which
moment of the chunk plays at each context time. A timeline whose output suddenly runs late stands
for an output stall: the audio heard at a server moment was rendered that much earlier.
"""

import numpy as np
import pytest

RATE = 8000  # Hz: 128-frame render quanta of 16 ms, so every tick falls on a quantum boundary
TICK_S = 0.032
TOTAL_S = 2.5

RENDER = """
async ({ startS, durationS, lateAtS, lateMs, rate, tickS, totalS }) => {
  const { Player } = await import("/static/player.js");
  const ctx = new OfflineAudioContext(1, Math.round(rate * totalS), rate);
  const buffer = ctx.createBuffer(1, Math.round(rate * durationS), rate);
  const ramp = buffer.getChannelData(0);
  for (let i = 0; i < ramp.length; i++) ramp[i] = i / ramp.length;
  let lateS = 0;
  const timeline = {
    ctxAt: (serverMs) => serverMs / 1000 - lateS,
    serverAt: (when) => (when + lateS) * 1000,
    rate: () => 1,
  };
  const player = new Player(ctx, ctx.destination, timeline);
  const chunk = { chunk_id: "c", buffer, starts_at_ms: startS * 1000, ended: 0 };
  chunk.onEnded = () => { chunk.ended += 1; };
  player.play(chunk);
  for (let k = 1; (k + 1) * tickS < totalS; k++) {
    const t = k * tickS;
    ctx.suspend(t).then(() => {
      if (Math.abs(t - lateAtS) < tickS / 2) lateS = lateMs / 1000;
      player.tick([chunk], t * 1000);
      ctx.resume();
    });
  }
  const out = await ctx.startRendering();
  return { samples: Array.from(out.getChannelData(0)), ended: chunk.ended, crossfades: player.crossfades };
}
"""


@pytest.fixture
async def render(browser, server):
    page = await browser.new_page(bypass_csp=True)
    await page.goto(f"{server.base_url}/c/{server.channel}")

    async def run(start_s: float, duration_s: float, late_at_s: float, late_ms: float) -> dict:
        args = {"startS": start_s, "durationS": duration_s, "lateAtS": late_at_s, "lateMs": late_ms}
        result = await page.evaluate(RENDER, args | {"rate": RATE, "tickS": TICK_S, "totalS": TOTAL_S})
        return result | {"samples": np.array(result["samples"])}

    yield run
    await page.close()


def between(samples: np.ndarray, from_s: float, to_s: float) -> np.ndarray:
    return samples[round(from_s * RATE) : round(to_s * RATE)]


def off_ms(out: dict, from_s: float, to_s: float, start_s: float, duration_s: float, late_s: float) -> np.ndarray:
    """At each context time from `from_s` to `to_s`: how far (ms) the chunk rendered is from where the
    timeline, `late_s` late, puts it (positive: ahead). The ramp's value says where it is."""
    times = np.arange(round(from_s * RATE), round(to_s * RATE)) / RATE
    due = (times + late_s - start_s) / duration_s
    return (between(out["samples"], from_s, to_s) - due) * duration_s * 1000


async def test_a_chunk_plays_where_the_timeline_says(render):
    out = await render(start_s=0.2, duration_s=1.5, late_at_s=99, late_ms=0)
    assert np.abs(off_ms(out, 0.21, 1.69, 0.2, 1.5, 0)).max() < 0.2, "the chunk is not where the timeline puts it"
    assert not between(out["samples"], 1.71, 2.4).any(), "the chunk sounds past its end"
    assert out["ended"] == 1 and out["crossfades"] == 0


async def test_a_large_error_mid_chunk_is_fixed_by_one_crossfade_to_the_right_place(render):
    out = await render(start_s=0.2, duration_s=1.5, late_at_s=0.8, late_ms=300)
    # the stall is noticed at the tick at 0.8 s; the crossfade starts a start margin (50 ms) later
    assert np.abs(off_ms(out, 0.9, 1.39, 0.2, 1.5, 0.3)).max() < 0.2, "after the crossfade it is not where it belongs"
    assert not between(out["samples"], 1.41, 2.4).any(), "the chunk sounds past the end the timeline gives it"
    assert out["crossfades"] == 1 and out["ended"] == 1


async def test_a_chunk_whose_end_is_already_due_is_faded_out_not_played_late(render):
    # 300 ms late when 200 ms of it are left: by the timeline it ended 100 ms ago, and the rest heard
    # now would run into the silence between sentences (or the next sentence)
    out = await render(start_s=0.2, duration_s=1.0, late_at_s=1.0, late_ms=300)
    assert not between(out["samples"], 1.07, 2.4).any(), "the late tail of the chunk was played"
    assert out["crossfades"] == 1 and out["ended"] == 1, "the chunk was not faded out and acknowledged"


async def test_a_small_error_is_taken_out_smoothly_without_overshoot(render):
    out = await render(start_s=0.2, duration_s=2.2, late_at_s=0.5, late_ms=5)
    error_ms = off_ms(out, 0.5, 2.35, 0.2, 2.2, 0.005)
    assert out["crossfades"] == 0, "a 5 ms error was fixed by a crossfade, not by the rate"
    assert np.abs(np.diff(error_ms)).max() < 0.01, "the correction jumped instead of gliding"
    assert error_ms[-1] > -1.5, "still behind after 1.8 s of correction"
    assert error_ms.max() < 0.5, "the correction overshot"


HANDOVER = """
async ({ rate, totalS, handoverS }) => {
  const { Player } = await import("/static/player.js");
  const ctx = new OfflineAudioContext(2, Math.round(rate * totalS), rate);
  const merger = ctx.createChannelMerger(2);
  merger.connect(ctx.destination);
  const [left, right] = [ctx.createGain(), ctx.createGain()];
  left.connect(merger, 0, 0);
  right.connect(merger, 0, 1);
  const buffer = ctx.createBuffer(1, Math.round(rate * 1.5), rate);
  const ramp = buffer.getChannelData(0);
  for (let i = 0; i < ramp.length; i++) ramp[i] = i / ramp.length;
  const timeline = { ctxAt: (serverMs) => serverMs / 1000, serverAt: (when) => when * 1000, rate: () => 1 };
  const [old, next] = [new Player(ctx, left, timeline), new Player(ctx, right, timeline)];
  const chunk = { chunk_id: "c", buffer, starts_at_ms: 200, ended: 0 };
  chunk.onEnded = () => { chunk.ended += 1; };
  old.play(chunk);
  ctx.suspend(0.8).then(() => {  // as the page hands over to another context: the same moment on both
    old.release(chunk, handoverS);
    next.notBefore = handoverS;
    next.play(chunk);
    ctx.resume();
  });
  const out = await ctx.startRendering();
  return { old: Array.from(out.getChannelData(0)), next: Array.from(out.getChannelData(1)), ended: chunk.ended };
}
"""


async def test_a_chunk_handed_over_to_another_player_crossfades_at_one_moment_and_ends_once(browser, server):
    """What the page does when it moves to a larger output buffer (web/static/listener.js, handOver): the
    old player releases the chunk at a moment, the new one starts it there at the same place, and the
    two fade across in 10 ms, so the sum is the chunk where the timeline puts it throughout."""
    page = await browser.new_page(bypass_csp=True)
    await page.goto(f"{server.base_url}/c/{server.channel}")
    out = await page.evaluate(HANDOVER, {"rate": RATE, "totalS": TOTAL_S, "handoverS": 0.9})
    await page.close()
    old, new = np.array(out["old"]), np.array(out["next"])
    assert not between(old, 0.912, 2.4).any(), "the old player still sounds after the handover"
    assert not between(new, 0.0, 0.9).any(), "the new player sounded before the handover"
    assert between(new, 0.912, 1.69).all(), "the new player does not play the rest of the chunk"
    both = {"samples": old + new}
    assert np.abs(off_ms(both, 0.21, 1.69, 0.2, 1.5, 0)).max() < 0.2, "the handover moved the chunk off the timeline"
    assert out["ended"] == 1, "the chunk's end was reported other than once"


CUT = """
async ({ rate, totalS, cutAtS, callS }) => {
  const { Player } = await import("/static/player.js");
  const ctx = new OfflineAudioContext(1, Math.round(rate * totalS), rate);
  const buffer = ctx.createBuffer(1, Math.round(rate * 1.5), rate);
  buffer.getChannelData(0).fill(0.5);
  const timeline = { ctxAt: (serverMs) => serverMs / 1000, serverAt: (when) => when * 1000, rate: () => 1 };
  const player = new Player(ctx, ctx.destination, timeline);
  const chunk = { chunk_id: "c", buffer, starts_at_ms: 200, ended: 0 };
  chunk.onEnded = () => { chunk.ended += 1; };
  player.play(chunk);
  ctx.suspend(callS).then(() => { player.cut(chunk, cutAtS); ctx.resume(); });  // as a pause or a skip arrives
  const out = await ctx.startRendering();
  return { samples: Array.from(out.getChannelData(0)), ended: chunk.ended };
}
"""


@pytest.mark.parametrize(("cut_at_s", "faded_from_s"), [(1.0, 0.99), (0.7, 0.8)])
async def test_a_cut_fades_out_to_its_moment_or_at_once_when_that_is_past(browser, server, cut_at_s, faded_from_s):
    """A pause or a skip cuts a chunk with a 10 ms fade ending at its moment, or, that moment past when
    it arrives (a skip's, always), starting at once: never a hard stop, which clicks."""
    page = await browser.new_page(bypass_csp=True)
    await page.goto(f"{server.base_url}/c/{server.channel}")
    out = await page.evaluate(CUT, {"rate": RATE, "totalS": TOTAL_S, "cutAtS": cut_at_s, "callS": 0.8})
    await page.close()
    samples = np.array(out["samples"])
    assert (between(samples, 0.21, faded_from_s) == 0.5).all(), "the chunk did not play in full up to the cut"
    fade = between(samples, faded_from_s, faded_from_s + 0.01)
    assert fade[0] > 0.45 and (np.diff(fade) < 0).all() and fade[-1] < 0.05, "the chunk was not faded out over 10 ms"
    assert not between(samples, faded_from_s + 0.0102, 2.4).any(), "the chunk sounds past the cut"
    assert out["ended"] == 0, "a cut chunk was reported as played out"
