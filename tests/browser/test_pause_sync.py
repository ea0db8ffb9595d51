"""Pause and resume at the speaker: two listener pages in Chromium, each on its own PulseAudio sink,
recorded on one clock (tests/speakers.py), and a third page that tunes in while the channel is
paused. Every page must go silent at the announced moment, come back at the announced resume
together, and go on from the sample it stopped at: nothing replayed, nothing skipped."""

import asyncio
import time

import aiohttp
import numpy as np
import pytest
from speakers import (
    GLITCH_SHADOW_S,
    GLITCHED_WITHIN_MS,
    RATE,
    SPEAKER_CONFIG,
    chunk_audio,
    follow,
    glitches_s,
    heard_jumps_s,
    percentile,
    stop_recording,
)

NARRATION = (
    "The lanterns of the harbour flicker in the fog. A bell tolls twice, then falls silent. "
    "Somewhere below the pier, oars dip into black water."
)
WITHIN_MS = 5

pytestmark = [pytest.mark.server_config(SPEAKER_CONFIG), pytest.mark.speakers(3)]


async def until(wall_s: float) -> None:
    await asyncio.sleep(max(0.0, wall_s - time.time()))


def envelope(signal: np.ndarray) -> np.ndarray:
    """RMS over every millisecond."""
    per_ms = RATE // 1000
    frames = signal[: len(signal) // per_ms * per_ms].reshape(-1, per_ms)
    return np.sqrt((frames * frames).mean(axis=1))


def went_quiet_s(recording, listener: int, around_s: float) -> float:
    """When the listener's output fell below a tenth of its level, in the second around `around_s`."""
    level, first_ms = _window(recording, listener, around_s)
    loud = np.nonzero(level > 0.1 * np.percentile(level, 90))[0]
    return recording.clock.time_of((first_ms + loud[-1] + 1) * RATE // 1000)


def came_back_s(recording, listener: int, around_s: float) -> float:
    """When the listener's output rose above a tenth of its level, in the second around `around_s`."""
    level, first_ms = _window(recording, listener, around_s)
    loud = np.nonzero(level > 0.1 * np.percentile(level, 90))[0]
    return recording.clock.time_of((first_ms + loud[0]) * RATE // 1000)


def _window(recording, listener: int, around_s: float) -> tuple[np.ndarray, int]:
    centre = int(recording.clock.frame_at(around_s))
    lo, hi = centre - RATE // 2, centre + RATE // 2
    first_ms = lo * 1000 // RATE
    return envelope(recording.channel(listener)[first_ms * RATE // 1000 : hi]), first_ms


async def test_every_page_stops_and_goes_on_together_at_the_announced_moments(server, connect, pulse, listeners):
    observer = await connect()
    await observer.next("snapshot")
    recorder = await listeners.open_recorded([0, 1])
    await asyncio.sleep(5)  # past the pages' unsteady first seconds of output, as for the late joiner below
    await server.say(NARRATION)
    first = await observer.next("audio_chunk_ready")
    await until(first["starts_at_ms"] / 1000 + 0.7)  # well into the first sentence
    paused_at_ms = (await server.control("pause"))["paused_at_ms"]
    await until(paused_at_ms / 1000 + 0.3)
    late = await listeners.open(2)  # tunes in while paused
    assert await late.is_visible("#paused"), "a page opened while paused does not say so"
    assert await listeners.pages[0].is_visible("#paused")
    # A page's first seconds of output are not steady (docs/performance.md): the late joiner's too, so
    # the pause lasts past them; its sync is what is under test here, not its output's start-up.
    await asyncio.sleep(7)
    resumed = await server.control("resume")
    resumes_at_ms, shift_ms = resumed["resumes_at_ms"], resumed["shift_ms"]
    await until(resumes_at_ms / 1000 + 2.5)
    recording = await stop_recording(recorder, pulse)
    assert not await listeners.pages[0].is_visible("#paused")

    paused_s, resumes_s = paused_at_ms / 1000, resumes_at_ms / 1000
    # On two busy cores a page's output sometimes underruns by itself (docs/performance.md): a page that
    # detected such a glitch of its own just before the pause or around the resume (not in the silence
    # between, where the late joiner's browser starting disturbs the others) is held to the looser bound.
    windows = [(paused_s - GLITCH_SHADOW_S, paused_s + 0.2), (resumes_s - GLITCH_SHADOW_S, resumes_s + 2.5)]
    disturbed = set()
    for i, page in listeners.pages.items():
        if any(lo <= at_s <= hi for at_s in await glitches_s(page) for lo, hi in windows):
            disturbed.add(i)
    steady = [i for i in (0, 1, 2) if i not in disturbed]
    bound = {i: GLITCHED_WITHIN_MS if i in disturbed else WITHIN_MS for i in (0, 1, 2)}
    stops = {i: (went_quiet_s(recording, i, paused_s) - paused_s) * 1000 for i in (0, 1)}
    starts = {i: (came_back_s(recording, i, resumes_s) - resumes_s) * 1000 for i in (0, 1, 2)}
    said = f"(pages that glitched: {sorted(disturbed)})"
    assert all(abs(e) <= bound[i] for i, e in stops.items()), f"stopped off the announced moment: {stops} ms {said}"
    assert all(abs(e) <= bound[i] for i, e in starts.items()), f"came back off the announced moment: {starts} ms {said}"
    # the steady pages together within the tight bound; with fewer than two of them, all within the loose one
    together = [starts[i] for i in steady] if len(steady) >= 2 else list(starts.values())
    apart_ms = WITHIN_MS if len(steady) >= 2 else GLITCHED_WITHIN_MS
    assert max(together) - min(together) <= apart_ms, f"not back together: {starts} ms {said}"

    # What the pause cut goes on from where it stopped: every stretch found after the resume is at its
    # moved place, none of it is from before the cut, and the first comes right after the cut.
    cut_offset_ms = paused_at_ms - first["starts_at_ms"]
    async with aiohttp.ClientSession() as http:
        audio = await chunk_audio(http, server.base_url, first["chunk_id"])
    for listener in (0, 1, 2):
        after = await asyncio.to_thread(
            follow, recording, listener, first["chunk_id"], audio, first["starts_at_ms"] + shift_ms
        )
        after = [h for h in after if h.heard_s >= resumes_s]
        assert after, f"listener {listener}: the cut sentence did not go on after the resume"
        assert min(h.offset_ms for h in after) >= cut_offset_ms - 40, f"listener {listener} replayed audio"
        assert min(h.offset_ms for h in after) <= cut_offset_ms + 100, f"listener {listener} skipped audio"
        errors = [abs(h.error_ms) for h in after if h.offset_ms >= cut_offset_ms]  # wholly after the cut
        # p90: one stretch mismatched, or an output glitch of the rig's own, is not the resume's doing;
        # nor is a jump the recording heard in this output's timing (an underrun its page could not see)
        off = percentile(errors, 90)
        jumped = heard_jumps_s(after)
        limit = GLITCHED_WITHIN_MS if jumped else bound[listener]
        assert off <= limit, f"listener {listener}: {off:.1f} ms off after the resume (p90) {said}, jumps at {jumped}"
