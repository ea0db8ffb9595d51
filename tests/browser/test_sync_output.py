"""Sync at the speaker: two listener pages in Chromium, each playing into its own PulseAudio sink, recorded
together on one clock; every stretch of every chunk found in what each played (tests/speakers.py).

One listener's output is stopped for 150 ms mid-sentence (its sink suspended): the page must notice
and be back on the timeline within a second, with a crossfade rather than a hard cut, while the other
listener is untouched. bench/sync_output.py measures the same more thoroughly (docs/performance.md).
"""

import asyncio
import os
import time

import aiohttp
import pytest
from chromium import chromium_path
from playwright.async_api import async_playwright
from speakers import (
    Listeners,
    PulseServer,
    chunk_audio,
    clicks,
    follow,
    percentile,
    pulseaudio_binaries,
    recovery,
    skews_ms,
)

NARRATION = (
    "The lanterns of the harbour flicker in the fog. A bell tolls twice, then falls silent. "
    "Somewhere below the pier, oars dip into black water. The captain raises a hand, and the crew holds "
    "its breath. Then, from the mist, a voice calls your names."
)

pytestmark = pytest.mark.server_config(
    {
        "tts": {"tone_ms_per_char": 55, "tone_delay_ms": 20},
        "timeline": {"lead_ms": 800, "sentence_gap_ms": 250, "request_gap_ms": 600},
    }
)


@pytest.fixture
def pulse(tmp_path):
    if pulseaudio_binaries() is None or chromium_path() is None:
        if os.environ.get("BROADCASTER_REQUIRE_BROWSER") == "1":
            pytest.fail("PulseAudio and Chromium are required here (BROADCASTER_REQUIRE_BROWSER=1)")
        pytest.skip("no PulseAudio or Chromium on this machine (apt-get install pulseaudio chromium)")
    started = PulseServer(tmp_path, listeners=2)
    started.start()
    yield started
    started.stop()


async def test_a_stalled_output_is_back_in_step_within_a_second_without_a_click(server, connect, pulse):
    observer = await connect()
    await observer.next("snapshot")
    async with async_playwright() as pw:
        listeners = Listeners(pw, pulse, f"{server.base_url}/c/{server.channel}", chromium_path())
        try:
            for listener in (0, 1):
                await listeners.open(listener)
            recorder = pulse.recorder()
            recorder.start()
            # The recorder's first second does not count towards its clock; and a page's own first
            # seconds are not yet steady (docs/performance.md): this test is about what follows.
            await asyncio.sleep(5)
            request_id = (await (await server.say(NARRATION)).json())["request_id"]
            first = await observer.next("audio_chunk_ready")
            second = await observer.next("audio_chunk_ready")
            await asyncio.sleep(max(0.0, second["starts_at_ms"] / 1000 + 1.0 - time.time()))
            began, resumed = await pulse.stall(0, 150)
            await observer.next("request_played", timeout=60, where=lambda m: m["request_id"] == request_id)
            recording = recorder.stop(pulse.mix_latency_s())
            page = listeners.pages[0]
            glitches = await page.evaluate("window.broadcaster.output.glitchCount")
            crossfades = await page.evaluate("window.broadcaster.player.crossfades")
        finally:
            await listeners.close()

    chunks = [first, second] + [m for m in observer.messages if m["type"] == "audio_chunk_ready"][2:]
    heard = {0: [], 1: []}
    async with aiohttp.ClientSession() as http:
        for chunk in chunks:
            audio = await chunk_audio(http, server.base_url, chunk["chunk_id"])
            for listener in heard:
                heard[listener] += follow(recording, listener, chunk["chunk_id"], audio, chunk["starts_at_ms"])

    calm = {i: [h for h in found if not began - 0.2 <= h.heard_s <= resumed + 1.0] for i, found in heard.items()}
    skews = skews_ms(calm)
    assert len(skews) > 200, "too little of the narration was found in the recording"
    assert percentile(skews, 95) < 5, f"listeners apart by {percentile(skews, 95):.1f} ms (p95) without glitches"
    errors = [abs(h.error_ms) for found in calm.values() for h in found]
    assert percentile(errors, 95) < 5, f"{percentile(errors, 95):.1f} ms off the timeline (p95) without glitches"

    back = recovery(sorted(heard[0], key=lambda h: h.heard_s), resumed)
    assert back.worst_ms > 100, "the stall did not delay the output: the test injected nothing"
    assert back.back_in_ms is not None and back.back_in_ms < 1000, f"not back within 5 ms in a second: {back}"
    assert glitches >= 1 and crossfades >= 1, "the page did not notice the glitch or did not correct it"
    cuts = [t for t in clicks(recording, 0) if resumed + 0.01 < t <= resumed + 1.5]
    assert not cuts, "the correction cut the audio instead of crossfading"
    assert not clicks(recording, 1), "the other listener's output was disturbed"
