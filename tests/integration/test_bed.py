"""The bed under the line, through the real server: set from the music folder, announced, served, and
heard in live.mp3 dipping under narration by duck_db (decoded by the bundled ffmpeg)."""

import asyncio
import logging

import aiohttp
import numpy as np
import pytest
import soundfile
from media import band_levels, inside, live_pcm, tone

BED_HZ = 100  # below the tone engine's narration (220 Hz and up), so the two can be told apart
RATE = 22050


@pytest.fixture
def music(tmp_path, monkeypatch):
    """A music folder (the default ./music) with ambience/hum.wav and a folder of two files."""
    folder = tmp_path / "music" / "ambience"
    (folder / "tavern").mkdir(parents=True)
    tone(folder / "hum.wav", 12, BED_HZ)
    tone(folder / "tavern" / "a.wav", 6, 150)
    tone(folder / "tavern" / "b.wav", 7, 180)
    monkeypatch.chdir(tmp_path)
    return folder


async def send(server, method: str, path: str, body=None, token: str | None = "producer") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {server.token if token == 'producer' else token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{server.base_url}{path}", json=body, headers=headers) as resp:
            return resp.status, await resp.json()


async def test_a_bed_is_announced_and_its_segments_are_served(server, connect, music):
    listener = await connect()
    await listener.next("snapshot")
    status, body = await send(server, "PUT", "/api/channels/table/bed", {"folder": "ambience/tavern", "fade_ms": 500})
    assert status == 200, body
    bed = body["bed"]
    assert [t["title"] for t in bed["tracks"]] == ["a", "b"] and bed["loop_ms"] == 13_000
    assert (bed["volume"], bed["duck_db"], bed["fade_in_ms"]) == (0.5, -12.0, 500)
    changed = await listener.next("bed_changed")
    assert changed["bed"]["bed_id"] == bed["bed_id"] and changed["bed"]["origin_ms"] == bed["origin_ms"]
    segment = bed["tracks"][0]["segments"][0]
    async with aiohttp.ClientSession() as http:
        async with http.get(server.base_url + segment["url"]) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "audio/mpeg" and len(await resp.read()) > 1000
        foreign = {"Origin": "https://vtt.example"}  # a page embedding this public channel plays its bed too
        async with http.get(server.base_url + segment["url"], headers=foreign) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
        preflight = foreign | {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"}
        async with http.options(server.base_url + segment["url"], headers=preflight) as resp:
            assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
        other = segment["url"].replace(segment["chunk_id"], "0123456789abcdef")
        async with http.get(server.base_url + other) as resp:
            assert resp.status == 404  # only the segments of the channel's beds are served this way
    late = await connect()
    assert (await late.next("snapshot"))["bed"]["bed_id"] == bed["bed_id"]
    kept = await server.station.store.request_ids()  # what cleanup keeps: the bed's tracks too
    assert {t["track_id"] for t in bed["tracks"]} <= kept

    for bad in ({"fade_ms": -5}, {"fade_ms": "slow"}, {"colour": 1}):
        assert (await send(server, "DELETE", "/api/channels/table/bed", bad))[0] == 400
    status, body = await send(server, "DELETE", "/api/channels/table/bed")
    assert status == 200 and body["ends_at_ms"] - body["fades_out_at_ms"] == 500  # its own fade by default
    changed = await listener.next("bed_changed")
    assert changed["bed"] is None and changed["fading_beds"][0]["bed_id"] == bed["bed_id"]
    assert (await send(server, "DELETE", "/api/channels/table/bed"))[0] == 409  # nothing to stop


@pytest.mark.parametrize(
    "body, status",
    [
        ({}, 400),
        ({"path": "ambience/hum.wav", "folder": "ambience/tavern"}, 400),
        ({"path": "ambience/hum.wav", "shuffle": True}, 400),
        ({"folder": "ambience/tavern", "shuffle": "yes"}, 400),
        ({"path": "ambience/hum.wav", "volume": 2}, 400),
        ({"path": "ambience/hum.wav", "volume": True}, 400),
        ({"path": "ambience/hum.wav", "duck_db": 6}, 400),
        ({"path": "ambience/hum.wav", "fade_ms": -1}, 400),
        ({"path": "ambience/hum.wav", "fade_ms": 1.5}, 400),
        ({"path": "ambience/hum.wav", "colour": "blue"}, 400),
        ({"path": 7}, 400),
        ({"path": "ambience/missing.wav"}, 404),
        ({"path": "../../etc/passwd"}, 404),
        ({"folder": "/etc"}, 404),
        ({"folder": "ambience/hum.wav"}, 404),
        ({"path": "ambience"}, 404),
    ],
)
async def test_bad_beds_are_refused_and_change_nothing(server, music, body, status):
    assert (await send(server, "PUT", "/api/channels/table/bed", body))[0] == status
    _, state = await server.get_json("/api/channels/table/audio/queue")
    assert state["bed"] is None and state["fading_beds"] == []


async def test_a_bed_needs_the_producer_token_a_known_channel_and_json(server, music):
    good = {"path": "ambience/hum.wav"}
    assert (await send(server, "PUT", "/api/channels/table/bed", good, token=None))[0] == 401
    assert (await send(server, "PUT", "/api/channels/nowhere/bed", good))[0] == 404
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "text/plain"}
        async with http.put(f"{server.base_url}/api/channels/table/bed", data="path", headers=headers) as resp:
            assert resp.status == 415


async def test_not_audio_is_refused_and_nothing_is_left_behind(server, music):
    (music / "notes.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage, not audio at all" * 10)
    status, body = await send(server, "PUT", "/api/channels/table/bed", {"path": "ambience/notes.wav"})
    assert status == 422 and body["error"]["code"] == "not_audio", body
    _, state = await server.get_json("/api/channels/table/audio/queue")
    assert state["bed"] is None
    assert await server.station.audio.orphans(set(), grace_s=0) == []  # no audio of it kept


@pytest.mark.server_config({"tts": {"tone_ms_per_char": 45}})
async def test_live_mp3_dips_the_bed_by_duck_db_while_narration_sounds(server, connect, music):
    listener = await connect()
    await listener.next("snapshot")
    status, body = await send(
        server, "PUT", "/api/channels/table/bed", {"path": "ambience/hum.wav", "volume": 1.0, "fade_ms": 0}
    )
    assert status == 200, body
    player = asyncio.create_task(live_pcm(f"{server.base_url}/c/table/live.mp3", 11, RATE))
    await asyncio.sleep(3.5)
    await server.say("The stranger at the bar raises a glass to the whole room.")  # about 2.5 s of voice
    pcm = await player
    bed_level, voice_level = band_levels(pcm, BED_HZ, RATE)
    voiced = voice_level > 0.3 * voice_level.max()
    assert voiced.sum() >= 15, "the narration was not heard in live.mp3"
    ducked = bed_level[inside(voiced, margin=4)]  # well inside the narration: down by then
    quiet = bed_level[inside(~voiced, margin=12)]  # well away from it: back up by then
    assert len(ducked) >= 5 and len(quiet) >= 10 and np.median(quiet) > 0
    dip_db = 20 * np.log10(np.median(ducked) / np.median(quiet))
    assert -13.5 <= dip_db <= -10.5, f"the bed dipped by {dip_db:.1f} dB under the voice, not -12"


async def test_the_console_lists_the_channels_ambience_folder(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, body = await send(server, "GET", "/api/channels/table/scenes")
    assert status == 200 and body == {"folder": None, "scenes": []}  # no music folder at all
    shared = tmp_path / "music" / "ambience"
    (shared / "Storm").mkdir(parents=True)
    (shared / "bells.ogg").write_bytes(b"")
    (shared / ".hidden").write_bytes(b"")
    status, body = await send(server, "GET", "/api/channels/table/scenes")
    assert body == {
        "folder": "ambience",
        "scenes": [{"name": "bells", "path": "ambience/bells.ogg"}, {"name": "Storm", "folder": "ambience/Storm"}],
    }
    (tmp_path / "music" / "table" / "ambience" / "Tavern").mkdir(parents=True)  # the channel's own comes first
    status, body = await send(server, "GET", "/api/channels/table/scenes")
    assert body == {"folder": "table/ambience", "scenes": [{"name": "Tavern", "folder": "table/ambience/Tavern"}]}
    assert (await send(server, "GET", "/api/channels/table/scenes", token=None))[0] == 401


@pytest.mark.server_config({"tts": {"tone_ms_per_char": 45}})
async def test_listen_out_writes_the_mix_with_the_bed_dipping_under_narration(server, music, tmp_path):
    from broadcaster.client import listen

    status, body = await send(
        server, "PUT", "/api/channels/table/bed", {"path": "ambience/hum.wav", "volume": 1.0, "fade_ms": 0}
    )
    assert status == 200, body
    out = tmp_path / "heard.wav"
    listening = asyncio.create_task(listen(server.base_url, "table", out=out, seconds=10, quiet=True))
    await asyncio.sleep(3.0)
    await server.say("The stranger at the bar raises a glass to the whole room.")
    await listening
    samples, rate = soundfile.read(out, dtype="int16", always_2d=True)
    assert rate == 44100 and len(samples) >= 6 * rate  # the bed from the start, not only the narration
    bed, voice = band_levels(samples.mean(axis=1), BED_HZ, rate)
    voiced = voice > 0.3 * voice.max()
    ducked, quiet = bed[inside(voiced, margin=4)], bed[inside(~voiced, margin=12)]
    assert len(ducked) >= 5 and len(quiet) >= 5
    dip_db = 20 * np.log10(np.median(ducked) / np.median(quiet))
    assert -13.5 <= dip_db <= -10.5, f"the bed dipped by {dip_db:.1f} dB in the recording, not -12"


@pytest.mark.server_config({"tts": {"tone_ms_per_char": 45}})
async def test_a_listener_joining_mid_narration_is_told_what_the_ducking_follows(server, connect):
    """The snapshot's speech_ms names the narration still ducking the bed, so a page arriving mid-dip
    computes the same gain as everyone else."""
    first = await connect()
    await first.next("snapshot")
    await server.say("The stranger at the bar raises a glass. Nobody answers him.")
    chunks = [await first.next("audio_chunk_ready") for _ in range(2)]
    late = await connect()
    snapshot = await late.next("snapshot")
    spans = [[c["starts_at_ms"], c["starts_at_ms"] + c["duration_ms"]] for c in chunks]
    assert snapshot["speech_ms"] == spans


async def test_a_bed_stopped_while_paused_ends_at_the_pause_and_says_so(server, music, caplog):
    """Set and stopped during a pause, a bed never sounds: 200, it ends at the pause's moment with no
    fade (not the times of an older bed still fading out), and is stopped once."""
    paused = await server.control("pause")
    assert (await send(server, "PUT", "/api/channels/table/bed", {"path": "ambience/hum.wav"}))[0] == 200
    status, body = await send(server, "DELETE", "/api/channels/table/bed")
    assert status == 200, body
    assert body == {"bed": None, "fades_out_at_ms": paused["paused_at_ms"], "ends_at_ms": paused["paused_at_ms"]}
    await server.control("resume")
    assert (await send(server, "DELETE", "/api/channels/table/bed"))[0] == 409
    assert (await send(server, "PUT", "/api/channels/table/bed", {"path": "ambience/hum.wav", "fade_ms": 500}))[
        0
    ] == 200
    await asyncio.sleep(0.6)  # on the air (the lead is 300 ms)
    paused = await server.control("pause")
    scene = {"folder": "ambience/tavern", "fade_ms": 2000}  # the hum fades out over 2 s from the pause
    assert (await send(server, "PUT", "/api/channels/table/bed", scene))[0] == 200
    status, body = await send(server, "DELETE", "/api/channels/table/bed")
    assert status == 200, body
    assert body == {"bed": None, "fades_out_at_ms": paused["paused_at_ms"], "ends_at_ms": paused["paused_at_ms"]}
    await server.control("resume")
    await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
