"""A skip at the speaker: two listener pages in Chromium, each on its own PulseAudio sink, recorded on one
clock (tests/speakers.py). The narration on the air is skipped mid-sentence: every page stops it at
the request_cancelled's `stopped_at_ms` on the timeline, or at once if that moment is past when it
hears of it, with a short fade as a pause's: no click.

The server gives the skip's own moment, so it is always past by the time a page hears of it: each page
stops at once, heard after its own output latency (72 and 107 ms seen on the rig), so the pages are
not held to stopping together."""

import asyncio
import time

import numpy as np
import pytest
from speakers import RATE, SPEAKER_CONFIG, clicks, stop_recording

LONG = "The caravan gathers in the grey hour, camels groaning while the drivers check every strap twice. "
# After the moment: the message's way to the page, the page's reaction, its output's latency and the fade.
STOPPED_WITHIN_MS = 250

pytestmark = [pytest.mark.server_config(SPEAKER_CONFIG), pytest.mark.speakers(2)]


def went_quiet_s(recording, listener: int, around_s: float) -> float:
    """When the listener's output fell below a tenth of its level for good, in the second after `around_s`
    (its level in the half second before)."""
    per_ms = RATE // 1000
    start = int(recording.clock.frame_at(around_s - 0.5))
    signal = recording.channel(listener)[start : start + RATE * 3 // 2]
    frames = signal[: len(signal) // per_ms * per_ms].reshape(-1, per_ms)
    level = np.sqrt((frames * frames).mean(axis=1))
    loud = np.nonzero(level > 0.1 * np.percentile(level[:500], 90))[0]
    return recording.clock.time_of(start + (loud[-1] + 1) * per_ms)


async def test_every_page_stops_a_skipped_narration_at_its_moment_without_a_click(server, connect, pulse, listeners):
    """Every page stops a skipped sentence at once after the skip's moment, fading out as a pause does."""
    observer = await connect()
    await observer.next("snapshot")
    recorder = await listeners.open_recorded([0, 1])
    request_id = (await (await server.say(LONG + "The guide hums an old song.")).json())["request_id"]
    first = await observer.next("audio_chunk_ready", where=lambda m: m["request_id"] == request_id)
    await asyncio.sleep(max(0.0, first["starts_at_ms"] / 1000 + 1.5 - time.time()))  # well into the sentence
    await server.control(f"requests/{request_id}/skip")
    cancelled = await observer.next("request_cancelled", where=lambda m: m["request_id"] == request_id)
    stopped_s = cancelled["stopped_at_ms"] / 1000
    assert first["starts_at_ms"] / 1000 < stopped_s < (first["starts_at_ms"] + first["duration_ms"]) / 1000
    await asyncio.sleep(max(0.0, stopped_s + 1.5 - time.time()))
    recording = await stop_recording(recorder, pulse)

    quiet_ms = {i: (went_quiet_s(recording, i, stopped_s) - stopped_s) * 1000 for i in (0, 1)}
    assert all(0 <= q <= STOPPED_WITHIN_MS for q in quiet_ms.values()), f"stopped off the skip's moment: {quiet_ms} ms"
    for i in (0, 1):
        cut = [round((at - stopped_s) * 1000) for at in clicks(recording, i) if abs(at - stopped_s) < 0.5]
        assert not cut, f"listener {i} clicked at the skip (ms after its moment: {cut})"
