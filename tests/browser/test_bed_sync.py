"""The bed at the speaker: listener pages in Chromium, each on its own PulseAudio sink, recorded on one
clock (tests/speakers.py): three, and a fourth tuning in after the bed began. The bed (a 100 Hz hum, below
the tone engine's narration) dips under a narration and comes back: every page must make those
ramps at the same moments, on the timeline (within 5 ms; a page that detected an output glitch of
its own meanwhile, at most one, within 25 ms; a narration during which any page detected one is
narrated once more and that one judged), with the gain the server computes; and a page keeps its
Music volume."""

import asyncio
import time

import aiohttp
import pytest
from media import tone
from speakers import SPEAKER_CONFIG, assert_steady_pages_dip_together, narrate_until_steady, stop_recording

from broadcaster.core.bed import HOLD_MS, RELEASE_MS, duck_envelope, gain_at

BED_HZ = 100
WITHIN_MS = 5
NARRATION = "The stranger at the bar raises a glass. Nobody answers him."

pytestmark = [pytest.mark.server_config(SPEAKER_CONFIG), pytest.mark.speakers(4)]


@pytest.fixture
def music(tmp_path, monkeypatch):
    (tmp_path / "music" / "ambience").mkdir(parents=True)
    tone(tmp_path / "music" / "ambience" / "hum.wav", 30, BED_HZ)
    monkeypatch.chdir(tmp_path)  # the default music folder is ./music


async def put_bed(server, body: dict) -> dict:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {server.token}"}
        async with http.put(f"{server.base_url}/api/channels/{server.channel}/bed", json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return (await resp.json())["bed"]


async def test_every_page_dips_the_bed_under_narration_at_the_same_moments(server, connect, pulse, listeners, music):
    observer = await connect()
    await observer.next("snapshot")
    recorder = await listeners.open_recorded([0, 1, 2])
    bed = await put_bed(server, {"path": "ambience/hum.wav", "volume": 1.0, "fade_ms": 0})
    await until(bed["origin_ms"] / 1000 + 0.5)
    await listeners.open(3)  # tunes in while the bed plays
    await asyncio.sleep(5.0)  # past the late page's unsteady first seconds of output (docs/performance.md)

    async def narrate() -> list[tuple[int, int]]:
        await server.say(NARRATION)
        chunks = [await observer.next("audio_chunk_ready") for _ in range(2)]
        end_ms = chunks[-1]["starts_at_ms"] + chunks[-1]["duration_ms"]
        await until(end_ms / 1000 + 2.5)
        return [(c["starts_at_ms"], c["starts_at_ms"] + c["duration_ms"]) for c in chunks]

    speech, steady = await narrate_until_steady(listeners.pages, narrate)  # before page 3 reloads, below
    recording = await stop_recording(recorder, pulse)
    page = listeners.pages[3]
    assert "hum" in await page.text_content("#bed")
    points = duck_envelope(speech, bed["duck_db"])
    moments = [points[0][0] + 50, speech[0][0] + 500, speech[-1][1] + HOLD_MS + RELEASE_MS // 3]
    for listener, shown in listeners.pages.items():
        gains = await shown.evaluate("(ts) => ts.map((t) => window.broadcaster.bedGainAt(t))", moments)
        assert gains == pytest.approx([gain_at(points, t) for t in moments], abs=1e-9), listener
        # decoded bed audio is kept only for the segments a layer has in hand, not for every one heard
        kept, held = await shown.evaluate(KEPT_BED_AUDIO)
        assert set(kept) <= set(held), (listener, kept, held)
    await page.fill("#music-volume", "0.35")
    await page.dispatch_event("#music-volume", "input")
    await page.reload()
    assert await page.input_value("#music-volume") == "0.35"  # remembered by this browser

    await asyncio.to_thread(
        assert_steady_pages_dip_together, recording, [0, 1, 2, 3], steady, BED_HZ, speech, bed["duck_db"], WITHIN_MS
    )


KEPT_BED_AUDIO = """() => {
  const s = window.broadcaster;
  return [[...s.bedBuffers.keys()], [...s.beds.values()].flatMap((b) => [...b.playing.values()].map((c) => c.chunk_id))];
}"""


async def until(wall_s: float) -> None:
    await asyncio.sleep(max(0.0, wall_s - time.time()))
