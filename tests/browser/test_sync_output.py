"""Sync at the speaker: two listener pages in Chromium, each playing into its own PulseAudio sink, recorded
together on one clock; every stretch of every chunk found in what each played (tests/speakers.py).

One listener's output is stopped for 150 ms mid-sentence (its sink suspended): the page must notice
and be back on the timeline within a second, with a crossfade rather than a hard cut, while the other
listener is untouched. Away from the stall and from any other glitch (one a page detected by itself,
or a jump in an output's timing the recording heard: a busy machine's underruns, which the browser's
timestamps can hide), the two stay within 5 ms (p95) of each other and of the timeline.
Every core kept busy for 5 s: they stay within 25 ms (p95) meanwhile and come back together after.
bench/sync_output.py measures the same more thoroughly (docs/performance.md).
"""

import asyncio
import os
import sys
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from speakers import (
    SPEAKER_CONFIG,
    chunk_audio,
    clicks,
    follow,
    glitches_s,
    heard_jumps_s,
    near_glitch,
    percentile,
    recovery,
    skews_ms,
    stop_recording,
    together_again_ms,
)

NARRATION = (
    "The lanterns of the harbour flicker in the fog. A bell tolls twice, then falls silent. "
    "Somewhere below the pier, oars dip into black water. The captain raises a hand, and the crew holds "
    "its breath. Then, from the mist, a voice calls your names."
)

pytestmark = pytest.mark.server_config(SPEAKER_CONFIG)


async def test_a_stalled_output_is_back_in_step_within_a_second_without_a_click(server, connect, pulse, listeners):
    observer = await connect()
    await observer.next("snapshot")
    recorder = await listeners.open_recorded([0, 1])
    await asyncio.sleep(5)  # past the pages' unsteady first seconds of output (docs/performance.md)
    request_id = (await (await server.say(NARRATION)).json())["request_id"]
    first = await observer.next("audio_chunk_ready")
    second = await observer.next("audio_chunk_ready")
    await asyncio.sleep(max(0.0, second["starts_at_ms"] / 1000 + 1.0 - time.time()))
    began, resumed = await pulse.stall(0, 150)
    await observer.next("request_played", timeout=60, where=lambda m: m["request_id"] == request_id)
    recording = await stop_recording(recorder, pulse)
    page = listeners.pages[0]
    glitches = await page.evaluate("window.broadcaster.output.glitchCount")
    crossfades = await page.evaluate("window.broadcaster.player.crossfades")
    # besides the stall: glitches a page detected by itself (the rig's, or a busy machine's underruns)
    detected = [at_s for shown in listeners.pages.values() for at_s in await glitches_s(shown)]

    chunks = [first, second] + [m for m in observer.messages if m["type"] == "audio_chunk_ready"][2:]
    heard = await heard_in(recording, server, chunks)
    jumped = [at_s for found in heard.values() for at_s in heard_jumps_s(found)]

    calm = {
        i: [
            h
            for h in found
            if not began - 0.2 <= h.heard_s <= resumed + 1.0 and not near_glitch(h.heard_s, detected + jumped)
        ]
        for i, found in heard.items()
    }
    skews = skews_ms(calm)
    seen = (
        f"{len(detected)} glitches detected by the pages, {len(jumped)} jumps heard, "
        f"{listeners.realtime_threads} audio threads at realtime priority"
    )
    assert len(skews) > 200, f"too little of the narration was found in the recording away from glitches ({seen})"
    assert percentile(skews, 95) < 5, (
        f"listeners apart by {percentile(skews, 95):.1f} ms (p95) without glitches ({seen})"
    )
    errors = [abs(h.error_ms) for found in calm.values() for h in found]
    assert percentile(errors, 95) < 5, f"{percentile(errors, 95):.1f} ms off the timeline (p95) without glitches"

    back = recovery(sorted(heard[0], key=lambda h: h.heard_s), resumed)
    assert back.worst_ms > 100, "the stall did not delay the output: the test injected nothing"
    assert back.back_in_ms is not None and back.back_in_ms < 1000, f"not back within 5 ms in a second: {back}"
    assert glitches >= 1 and crossfades >= 1, "the page did not notice the glitch or did not correct it"
    cuts = [t for t in clicks(recording, 0) if resumed + 0.01 < t <= resumed + 1.5]
    assert not cuts, "the correction cut the audio instead of crossfading"
    # The stall must not reach the other listener. On a busy machine its output may underrun by
    # itself (CI, once): a click its own page detected as a glitch, away from the stall, is that.
    own = await glitches_s(listeners.pages[1])
    disturbed = [t for t in clicks(recording, 1) if began - 0.2 <= t <= resumed + 1.0 or not near_glitch(t, own)]
    assert not disturbed, (
        f"the other listener's output was disturbed at {[round(t - began, 2) for t in disturbed]} s from the "
        f"stall (its own glitches at {[round(t - began, 2) for t in own]} s)"
    )


async def test_a_burst_of_cpu_load_leaves_the_listeners_together(server, connect, pulse, listeners):
    """Every core busy for 5 s mid-narration (as a game master's laptop synthesizing beside its own page):
    the two listeners stay within 25 ms of each other (p95) meanwhile, and within 5 ms again in a second
    and a half once it ends. Before pages followed their output timestamps over time, 98-224 ms."""
    observer = await connect()
    await observer.next("snapshot")
    recorder = await listeners.open_recorded([0, 1])
    await asyncio.sleep(5)  # past the pages' unsteady first seconds of output (docs/performance.md)
    request_id = (await (await server.say(NARRATION + AND_THEN)).json())["request_id"]
    first = await observer.next("audio_chunk_ready")
    await asyncio.sleep(max(0.0, first["starts_at_ms"] / 1000 + 1.0 - time.time()))
    began = time.time()
    await cpu_burst(5.0)
    ended = time.time()
    await observer.next("request_played", timeout=60, where=lambda m: m["request_id"] == request_id)
    recording = await stop_recording(recorder, pulse)
    chunks = [first] + [m for m in observer.messages if m["type"] == "audio_chunk_ready"][1:]
    heard = await heard_in(recording, server, chunks)

    during = skews_ms({i: [h for h in found if began <= h.heard_s <= ended] for i, found in heard.items()})
    assert len(during) > 40, "too little of the narration was found in the recording under load"
    assert percentile(during, 95) < 25, f"listeners apart by {percentile(during, 95):.1f} ms (p95) under load"
    assert max(h.heard_s for found in heard.values() for h in found) > ended + 4, "the narration ended too soon"
    together_in = together_again_ms(heard, ended, 5.0, watch_s=4.0)
    assert together_in is not None and together_in < 1500, f"not within 5 ms of each other after: {together_in}"


async def cpu_burst(seconds: float) -> None:
    """A busy loop on every core for `seconds`: each process ends by itself."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    spinners = [await asyncio.create_subprocess_exec(sys.executable, "-c", spin) for _ in range(os.cpu_count() or 2)]
    await asyncio.gather(*(spinner.wait() for spinner in spinners))


async def output_glitches_s(page) -> list[float]:
    """Only the output glitches the page detected (wall clock, s), not its move (glitches_s)."""
    return await page.evaluate("window.broadcaster.output.glitches.map((g) => g.atLocalMs / 1000)")


async def listener_counter(server, name: str) -> float:
    """broadcaster_listener_{name}_total in the server's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(server.base_url + "/metrics") as resp:
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families[f"broadcaster_listener_{name}"].samples[0].value


async def heard_in(recording, server, chunks: list[dict]) -> dict[int, list]:
    """Every stretch of these chunks found in the two listeners' recorded output."""
    heard = {0: [], 1: []}
    async with aiohttp.ClientSession() as http:
        for chunk in chunks:
            audio = await chunk_audio(http, server.base_url, chunk["chunk_id"])
            for listener in heard:
                heard[listener] += await asyncio.to_thread(
                    follow, recording, listener, chunk["chunk_id"], audio, chunk["starts_at_ms"]
                )
    return heard


RECENT_GLITCHES = "window.broadcaster.output.glitches.filter((g) => g.atLocalMs >= Date.now() - 10000).length"


async def test_a_page_whose_output_keeps_stalling_says_so_in_words_until_it_is_steady(server, pulse, listeners):
    """Four stalls in a few seconds: that page says its audio keeps falling behind and may be off the
    others (its timestamps can hide tens of ms then), and stops saying it once its output is steady."""
    for listener in (0, 1):
        await listeners.open(listener)
    await asyncio.sleep(2)
    for _ in range(4):
        await pulse.stall(0, 150)
        await asyncio.sleep(0.6)
    stalled, other = listeners.pages[0], listeners.pages[1]
    await stalled.wait_for_selector("#output-warning:not([hidden])", timeout=5000)
    assert "keeps falling behind" in await stalled.text_content("#output-warning")
    if await other.evaluate(RECENT_GLITCHES) < 3:  # the other page's own output was steady meanwhile
        assert await other.is_hidden("#output-warning")
    await stalled.wait_for_selector("#output-warning", state="hidden", timeout=30_000)


AND_THEN = (
    " The fog parts, and a ship with black sails glides into the harbour. Its lanterns are red, and nobody"
    " stands at its helm."
)

# Every audio_played the page sends, with the lateness it reports, kept for the test to read.
COUNT_ACKS = """() => {
  const page = window.broadcaster, send = page.socket.send.bind(page.socket);
  page.acks = [];
  page.socket.send = (m) => {
    if (m.type === "audio_played") {
      const chunk = page.chunks.get(m.chunk_id);
      const heard = chunk && chunk.readyLocalMs !== undefined ? Math.round(page.socket.clock.serverMs(chunk.readyLocalMs)) : null;
      page.acks.push({ chunk_id: m.chunk_id, extra_ms: m.ready_at_ms === undefined || heard === null ? null : m.ready_at_ms - heard });
    }
    return send(m);
  };
}"""


async def test_a_listener_whose_output_keeps_glitching_switches_to_a_larger_buffer_mid_sentence_in_step(
    server, connect, pulse, listeners
):
    """Three stalls within a few seconds while a narration plays: the page says its audio keeps falling
    behind and offers the larger buffer; the listener turns it on, and the page moves to a new
    AudioContext, handing what sounds over with a crossfade at one moment (no cut, no sentence skipped
    or acknowledged twice), then plays on the timeline. It reports the extra output latency in its
    acknowledgements, the glitches and the switch in /metrics, and the browser starts there next time."""
    observer = await connect()
    await observer.next("snapshot")
    recorder = await listeners.open_recorded([0, 1])
    for page in listeners.pages.values():
        await page.evaluate(COUNT_ACKS)
    request_id = (await (await server.say(NARRATION + AND_THEN)).json())["request_id"]
    first = await observer.next("audio_chunk_ready")
    await asyncio.sleep(max(0.0, first["starts_at_ms"] / 1000 + 1.0 - time.time()))
    stalling, moving = 0, listeners.pages[0]
    for _ in range(4):
        await pulse.stall(stalling, 150)
        await asyncio.sleep(0.6)
    await moving.wait_for_selector("#output-warning:not([hidden])", timeout=5000)
    assert "larger audio buffer" in await moving.text_content("#output-warning")
    clicked_s = time.time()
    await moving.check("#larger-buffer")
    await moving.wait_for_function("window.broadcaster.outputBuffer.hint === 0.05", timeout=15_000)
    moved = await moving.evaluate("window.broadcaster.outputBuffer")
    await observer.next("request_played", timeout=60, where=lambda m: m["request_id"] == request_id)
    recording = await stop_recording(recorder, pulse)
    handover_s = moved["movedAtMs"] / 1000
    assert clicked_s + 4.9 < handover_s < clicked_s + 15, "the switch did not wait for the new output to settle"

    chunks = [m for m in observer.messages if m["type"] == "audio_chunk_ready"]
    assert chunks[-1]["starts_at_ms"] / 1000 > handover_s + 5, "the narration ended too soon after the move"
    heard = await heard_in(recording, server, chunks)
    # Judged against the timeline, not against the other page: that one, on the small buffer, may be
    # in an underrun storm of its own on a busy machine, tens of ms off without knowing it. Generous:
    # a busy machine's output can be 10-20 ms off unseen on either buffer (docs/performance.md), while
    # a handover mapped wrong is off by the extra latency, ~100 ms.
    detected = await output_glitches_s(moving)
    after = [h for h in heard[stalling] if h.heard_s > handover_s + 0.5 and not near_glitch(h.heard_s, detected)]
    errors = [abs(h.error_ms) for h in after]
    assert len(errors) > 100, "too little of the narration after the move was found in the recording"
    assert percentile(errors, 95) < 40, f"{percentile(errors, 95):.1f} ms off the timeline (p95) on the larger buffer"
    cuts = [t for t in clicks(recording, stalling) if handover_s < t <= handover_s + 1.0]
    assert not cuts, "the handover cut the audio instead of crossfading"

    acks = await moving.evaluate("window.broadcaster.acks")
    acked = [a["chunk_id"] for a in acks]
    assert sorted(acked) == sorted({c["chunk_id"] for c in chunks}), "a sentence was skipped or acknowledged twice"
    assert 20 <= moved["extraMs"] <= 300, f"an extra output latency of {moved['extraMs']} ms is not a larger buffer"
    # A request placed after the move, a lead ahead as the lead tuner counts it, is reported ready later by
    # the extra latency. (The narration's later sentences were announced further ahead than the page's
    # fetch window: fetched as their turn neared, they report no ready time, nor does the server want one.)
    then = (await (await server.say("And then, silence.")).json())["request_id"]
    placed = await observer.next("audio_chunk_ready", timeout=30, where=lambda m: m["request_id"] == then)
    acked_then = f"window.broadcaster.acks.some((a) => a.chunk_id === '{placed['chunk_id']}')"
    await moving.wait_for_function(acked_then, timeout=30_000)
    late = [
        a["extra_ms"] for a in await moving.evaluate("window.broadcaster.acks") if a["chunk_id"] == placed["chunk_id"]
    ]
    assert late == [moved["extraMs"]], f"ready_at_ms not later by the extra latency: {late}"

    # what the page counted reached the server, none of it lost to the server's one-report-per-5-s rule
    wanted = {"output_glitches": 4, "buffer_moves": 1}
    for _ in range(30):
        if all([await listener_counter(server, name) >= least for name, least in wanted.items()]):
            break
        await asyncio.sleep(0.5)
    assert await listener_counter(server, "output_glitches") >= 4, "glitches the page counted did not reach /metrics"
    assert await listener_counter(server, "buffer_moves") == 1

    await moving.reload()
    await moving.click("#tune")
    await moving.wait_for_function("window.broadcaster.output?.ready", timeout=20_000)
    again = await moving.evaluate("window.broadcaster.outputBuffer")
    assert again["hint"] == 0.05 and again["extraMs"] == moved["extraMs"], "the browser forgot the larger buffer"
    assert await moving.is_checked("#larger-buffer") and "larger audio buffer" in await moving.text_content("#sync")
    await moving.uncheck("#larger-buffer")  # and back: the browser's own buffer, nothing added to its reports
    await moving.wait_for_function("window.broadcaster.outputBuffer.hint === 'playback'", timeout=15_000)
    assert (await moving.evaluate("window.broadcaster.outputBuffer"))["extraMs"] == 0
    assert await moving.evaluate("localStorage.getItem('broadcaster.outputBuffer')") is None
