"""Talk-over through the real server: narration posted with "over" goes on the air at once over the
track playing, which dips under it in live.mp3 (decoded by the bundled ffmpeg); without it, narration
waits for the track's end."""

import asyncio

import aiohttp
import numpy as np
import pytest
from media import band_levels, inside, live_pcm, tone

RATE = 22050


@pytest.fixture
def music(tmp_path, monkeypatch):
    (tmp_path / "music").mkdir()
    tone(tmp_path / "music" / "hum.wav", 14, 100)
    monkeypatch.chdir(tmp_path)


async def post(server, path: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {server.token}"}
        async with http.post(f"{server.base_url}/api/channels/table{path}", json=body, headers=headers) as resp:
            return resp.status, await resp.json()


@pytest.mark.server_config({"tts": {"tone_ms_per_char": 45}})
async def test_talk_over_plays_over_the_track_which_dips_under_it(server, connect, music):
    listener = await connect()
    await listener.next("snapshot")
    assert (await post(server, "/tracks", {"path": "hum.wav"}))[0] == 202
    started = await listener.next("audio_stream_started", where=lambda m: m["kind"] == "track")
    player = asyncio.create_task(live_pcm(f"{server.base_url}/c/table/live.mp3", 11, RATE))
    await asyncio.sleep(3.5)
    status, body = await post(server, "/requests", {"text": "Stand-up in five minutes, in the big room.", "over": True})
    assert status == 202 and body["position"] == 0
    talk = await listener.next("audio_stream_started", where=lambda m: m["request_id"] == body["request_id"])
    end_ms = started["starts_at_ms"] + started["duration_ms"]
    assert talk["over"] is True and talk["starts_at_ms"] < end_ms - 5000  # over the track, not after it
    level, voice = band_levels(await player, 100, RATE)
    voiced = voice > 0.3 * voice.max()
    ducked, full = level[inside(voiced, margin=4)], level[inside(~voiced, margin=12)]
    assert len(ducked) >= 5 and len(full) >= 10
    dip_db = 20 * np.log10(np.median(ducked) / np.median(full))
    assert -13.5 <= dip_db <= -10.5, f"the track dipped by {dip_db:.1f} dB under the talk-over, not -12"


async def test_over_must_be_true_or_false(server):
    status, body = await post(server, "/requests", {"text": "Hello.", "over": "yes"})
    assert status == 400 and "over" in body["error"]["message"]
    _, state = await server.get_json("/api/channels/table/audio/queue")
    assert state["queue"] == [] and state["over"] == [] and state["now_playing"] is None


@pytest.mark.server_config({"tts": {"tone_ms_per_char": 10, "tone_delay_ms": 400}})
async def test_a_sentence_being_made_when_talk_over_comes_is_kept_not_made_again(server, connect, music, monkeypatch):
    """ "Up next" is being made behind the track when talk-over comes and takes the engine: the
    sentence it was making is kept, and each sentence of either is synthesized once."""
    begun: list[tuple[str, int]] = []
    ended: list[tuple[str, int]] = []
    progress = asyncio.Condition()
    make = server.station.maker.make

    async def counted(request, seq, *args, **kwargs):
        async with progress:
            begun.append((request.request_id, seq))
            progress.notify_all()
        chunk = await make(request, seq, *args, **kwargs)
        async with progress:
            ended.append((request.request_id, seq))
            progress.notify_all()
        return chunk

    async def until(seen: list, item: tuple[str, int]) -> None:
        async with progress:
            await asyncio.wait_for(progress.wait_for(lambda: item in seen), 10)

    monkeypatch.setattr(server.station.maker, "make", counted)
    assert (await post(server, "/tracks", {"path": "hum.wav"}))[0] == 202
    status, up_next = await post(server, "/requests", {"text": "Up next. A new song. Stay tuned."})
    assert status == 202
    await until(begun, (up_next["request_id"], 0))  # 400 ms to go
    status, talk = await post(server, "/requests", {"text": "Stand-up in five minutes.", "over": True})
    assert status == 202
    await until(ended, (talk["request_id"], 0))
    await until(ended, (up_next["request_id"], 2))
    ours = [m for m in begun if m[0] in (up_next["request_id"], talk["request_id"])]
    assert sorted(ours) == sorted([(up_next["request_id"], s) for s in range(3)] + [(talk["request_id"], 0)])
