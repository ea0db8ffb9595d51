"""live.mp3 across a pause, frame by frame, with no encoder, socket or clock: silence from the pause's
moment, and after the resume the cut chunk goes on from the sample it stopped at."""

from types import SimpleNamespace

import numpy as np

from broadcaster.config import LiveConfig
from broadcaster.core.channel import Channel
from broadcaster.core.model import Chunk, Request
from broadcaster.core.playout import render
from broadcaster.core.timeline import TimelineConfig
from broadcaster.runtime.live import FRAME_MS, LiveStream

RATE = 8000


def ramp_chunk(request: Request, duration_ms: int) -> tuple[Chunk, np.ndarray]:
    """A chunk whose every sample says where in the chunk it is (its index, as int16)."""
    chunk = Chunk("c0", request.request_id, 0, "One.", duration_ms, 0)
    samples = np.arange(duration_ms * RATE // 1000, dtype=np.int16).reshape(-1, 1)
    return chunk, samples


async def rendered(live: LiveStream, start_ms: int, end_ms: int) -> np.ndarray:
    frames = []
    for at in range(start_ms, end_ms, FRAME_MS):
        placed, live.title = await live._placed(at, at + FRAME_MS)
        frames.append(render(placed, at, at + FRAME_MS, RATE, 1))
    return np.concatenate(frames)[:, 0]


async def test_live_stops_at_the_pause_and_goes_on_from_the_same_sample():
    channel = Channel("office", TimelineConfig(lead_ms=500))
    request = Request("r0", "office", "One.", ["One."], 0)
    channel.submit(request, 0)
    channel.generation_started("r0", 0)
    chunk, samples = ramp_chunk(request, 2000)
    channel.chunk_ready(chunk, 0)  # on the air 500-2500
    live = LiveStream(
        SimpleNamespace(name="office", channel=channel), None, LiveConfig(sample_rate=RATE, bitrate_kbps=64), clock=int
    )
    live._cache["c0"] = samples

    channel.pause(700)  # at 1200: 700 ms in, sample 5600
    before = await rendered(live, 1000, 1200)
    assert before[0] == 500 * RATE // 1000 and before[-1] == 700 * RATE // 1000 - 1
    assert not (await rendered(live, 1200, 3000)).any()  # silence while paused, past the chunk's own end
    assert live.title == "office - paused"

    channel.resume(4000)  # at 4500
    assert not (await rendered(live, 3000, 4500)).any()  # nothing replayed before the resume
    after = await rendered(live, 4500, 4700)
    assert after[0] == 700 * RATE // 1000  # the very next sample
    assert np.all(np.diff(after) == 1)
