"""Talk-over at the speaker: listener pages in Chromium, each on its own PulseAudio sink, recorded on one
clock (tests/speakers.py). A track (a 100 Hz hum, below the tone engine's voice) plays; narration
posted with "over" goes on the air over it, and every page dips the track under the voice and
brings it back at the same moments, where the ducking envelope puts them (within 5 ms; a page that
detected an output glitch of its own meanwhile, at most one, within 25 ms; a talk-over during which
any page detected one is said once more and that one judged)."""

import asyncio
import time

import aiohttp
import pytest
from media import tone
from speakers import SPEAKER_CONFIG, assert_steady_pages_dip_together, narrate_until_steady, stop_recording

from broadcaster.core.bed import TALK_OVER_DUCK_DB

TRACK_HZ = 100
WITHIN_MS = 5

pytestmark = [pytest.mark.server_config(SPEAKER_CONFIG), pytest.mark.speakers(3)]


@pytest.fixture
def music(tmp_path, monkeypatch):
    (tmp_path / "music").mkdir()
    tone(tmp_path / "music" / "hum.wav", 40, TRACK_HZ)  # long enough for a third talk-over
    monkeypatch.chdir(tmp_path)  # the default music folder is ./music


async def post(server, path: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {server.token}"}
        async with http.post(
            f"{server.base_url}/api/channels/{server.channel}{path}", json=body, headers=headers
        ) as resp:
            assert resp.status == 202, await resp.text()
            return await resp.json()


async def test_every_page_dips_the_track_under_talk_over_at_the_same_moments(server, connect, pulse, listeners, music):
    observer = await connect()
    await observer.next("snapshot")
    recorder = await listeners.open_recorded([0, 1])
    await post(server, "/tracks", {"path": "hum.wav"})
    song = await observer.next("audio_stream_started", where=lambda m: m["kind"] == "track")
    await until(song["starts_at_ms"] / 1000 + 0.5)
    await listeners.open(2)  # tunes in while the track plays
    await asyncio.sleep(5.0)  # past the late page's unsteady first seconds of output (docs/performance.md)

    async def talk_over() -> list[tuple[int, int]]:
        talk = await post(server, "/requests", {"text": "Stand-up in five minutes. Bring your notes.", "over": True})
        chunks = [
            await observer.next("audio_chunk_ready", where=lambda m: m["request_id"] == talk["request_id"])
            for _ in range(2)
        ]
        end_ms = chunks[-1]["starts_at_ms"] + chunks[-1]["duration_ms"]
        assert end_ms + 2500 < song["starts_at_ms"] + song["duration_ms"]  # all of it over the track
        await until(end_ms / 1000 + 2.5)
        return [(c["starts_at_ms"], c["starts_at_ms"] + c["duration_ms"]) for c in chunks]

    speech, steady = await narrate_until_steady(listeners.pages, talk_over)
    recording = await stop_recording(recorder, pulse)
    await asyncio.to_thread(
        assert_steady_pages_dip_together, recording, [0, 1, 2], steady, TRACK_HZ, speech, TALK_OVER_DUCK_DB, WITHIN_MS
    )


async def until(wall_s: float) -> None:
    await asyncio.sleep(max(0.0, wall_s - time.time()))
