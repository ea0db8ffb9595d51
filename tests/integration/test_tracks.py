"""Music tracks: every common format decodes, is normalized and tagged; bad files leave nothing behind."""

import io
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest
import soundfile
from media import tone

from tts.encode import ffmpeg_exe

FORMATS = {  # extension: ffmpeg output options
    "mp3": ["-c:a", "libmp3lame", "-b:a", "96k"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libopus", "-b:a", "64k"],
    "m4a": ["-c:a", "aac", "-b:a", "96k"],
    "wav": ["-c:a", "pcm_s16le"],
}


def make_fixture(
    directory: Path, ext: str, volume_db: float = -6, seconds: float = 3, title: str = "Test Tone"
) -> Path:
    """A small tagged tone in the given format."""
    options = ("-af", f"volume={volume_db}dB", "-ac", "2", *FORMATS[ext])
    tags = {"title": title, "artist": "The Oscillators"}
    return tone(directory / f"tone-{volume_db:g}.{ext}", seconds, 440, *options, tags=tags)


def loudness(path: Path) -> float:
    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path), "-af", "ebur128", "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stderr
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", out)[-1])


async def upload(
    server, data: bytes, content_type: str = "audio/mpeg", token: str | None = None, filename: str = "song"
) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/{server.channel}/tracks",
            data=data,
            params={"filename": filename},
            headers={"Authorization": f"Bearer {token or server.token}", "Content-Type": content_type},
        ) as resp:
            return resp.status, await resp.json()


def leftovers(server) -> list[str]:
    data = server.station.config.data_path
    return sorted(p.name for p in (data / "audio").iterdir()) + sorted(p.name for p in (data / "uploads").glob("*"))


@pytest.mark.parametrize("ext", list(FORMATS))
async def test_each_format_is_decoded_tagged_and_normalized(server, connect, tmp_path, ext):
    """mp3, flac, ogg/opus, m4a/aac and wav uploads play as tracks with their tags, at the loudness target."""
    listener = await connect()
    await listener.next("snapshot")
    status, body = await upload(server, make_fixture(tmp_path, ext).read_bytes(), f"audio/{ext}")
    assert status == 202, body
    assert (body["title"], body["artist"]) == ("Test Tone", "The Oscillators")
    started = await listener.next("audio_stream_started")
    assert started["kind"] == "track" and abs(started["duration_ms"] - 3000) <= 30
    chunk = await listener.next("audio_chunk_ready")
    master = server.station.audio.track_path(body["request_id"])
    info = soundfile.info(master)
    assert (info.samplerate, info.channels) == (44100, 2)
    assert abs(loudness(master) - (-16)) <= 1.5
    assert chunk["text"] == "Test Tone"


async def test_quiet_and_loud_tracks_end_at_the_same_loudness(server, tmp_path):
    """Normalization brings a quiet and a loud file to the same target."""
    levels = []
    for volume in (-30, -3):
        status, body = await upload(server, make_fixture(tmp_path, "flac", volume_db=volume).read_bytes(), "audio/flac")
        assert status == 202
        levels.append(loudness(server.station.audio.track_path(body["request_id"])))
    assert abs(levels[0] - levels[1]) <= 1.0


@pytest.mark.parametrize(
    "data", [b"this is not audio at all" * 100, b"\x00" * 5000, b"ID3\x04\x00garbage" + bytes(range(256)) * 8]
)
async def test_non_audio_is_refused_and_leaves_nothing(server, data):
    """Text, zeros and a corrupt MP3 are refused with a clear 422 and leave no files or queue entries."""
    status, body = await upload(server, data)
    assert status == 422 and body["error"]["code"] == "not_audio"
    assert "decode" in body["error"]["message"] or "audio" in body["error"]["message"]
    assert leftovers(server) == []
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert state["queue"] == [] and state["now_playing"] is None


async def test_truncated_file_is_refused(server, tmp_path):
    """A file cut off in the middle of its header is refused, not half-queued."""
    whole = make_fixture(tmp_path, "m4a").read_bytes()
    status, body = await upload(server, whole[: len(whole) // 3], "audio/mp4")
    assert status == 422, body
    assert leftovers(server) == []


@pytest.mark.server_config({"music": {"max_upload_mb": 0.01}})
async def test_oversized_upload_is_refused_and_removed(server, tmp_path):
    """An upload over the size limit is a 413 and its partial file is removed."""
    status, body = await upload(server, make_fixture(tmp_path, "wav").read_bytes(), "audio/wav")
    assert status == 413 and body["error"]["code"] == "too_large"
    assert leftovers(server) == []


async def test_uploads_need_the_producer_token(server, tmp_path):
    """Without the producer token nothing is accepted."""
    status, body = await upload(server, make_fixture(tmp_path, "wav").read_bytes(), "audio/wav", token="bc_nope")
    assert status == 401


async def test_multipart_upload_uses_the_file_name_when_untagged(server, tmp_path):
    """A browser-style multipart upload works; an untagged file is titled after its name."""
    source = tmp_path / "Morning Theme.wav"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", str(source)], check=True)
    form = aiohttp.FormData()
    form.add_field("file", source.read_bytes(), filename=source.name, content_type="audio/wav")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/{server.channel}/tracks",
            data=form,
            headers={"Authorization": f"Bearer {server.token}"},
        ) as resp:
            body = await resp.json()
            assert resp.status == 202, body
    assert body["title"] == "Morning Theme" and body["artist"] is None


async def test_music_folder_tracks_are_queued_by_path_and_traversal_is_refused(server, tmp_path, monkeypatch):
    """A file in the music folder is queued by its relative path; paths outside it are not found."""
    folder = tmp_path / "music"
    folder.mkdir()
    make_fixture(folder, "ogg")
    monkeypatch.chdir(tmp_path)  # the default music folder is ./music
    async with aiohttp.ClientSession() as http:
        url = f"{server.base_url}/api/channels/{server.channel}/tracks"
        headers = {"Authorization": f"Bearer {server.token}"}
        async with http.post(url, json={"path": "tone--6.ogg"}, headers=headers) as resp:
            assert resp.status == 202 and (await resp.json())["title"] == "Test Tone"
        for bad in ["../music/../../etc/passwd", "/etc/passwd", "missing.mp3", ""]:
            async with http.post(url, json={"path": bad}, headers=headers) as resp:
                assert resp.status in (400, 404), bad


async def test_track_segments_join_without_a_pause(server, connect, tmp_path):
    """A track's chunks follow each other with no gap: the music is continuous."""
    listener = await connect()
    await listener.next("snapshot")
    status, body = await upload(server, make_fixture(tmp_path, "flac", seconds=11).read_bytes(), "audio/flac")
    chunks = [await listener.next("audio_chunk_ready") for _ in range(3)]
    for before, after in zip(chunks, chunks[1:]):
        assert after["starts_at_ms"] == before["starts_at_ms"] + before["duration_ms"]
    assert status == 202 and abs(sum(c["duration_ms"] for c in chunks) - 11000) <= 2


async def test_retrying_a_track_plays_the_music_again(server, connect, tmp_path):
    """Retrying a cancelled track queues the same music (not its title read aloud)."""
    listener = await connect()
    await listener.next("snapshot")
    await server.say("Something first, so the track waits.")
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {server.token}"}
        channel = f"{server.base_url}/api/channels/{server.channel}"
        # paused, the track waits however long its upload takes (a slow one outlasted the narration)
        async with http.post(f"{channel}/pause", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        _, body = await upload(server, make_fixture(tmp_path, "wav").read_bytes(), "audio/wav")
        base = f"{channel}/requests/{body['request_id']}"
        async with http.post(f"{base}/cancel", headers=headers) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/retry", headers=headers) as resp:
            retried = await resp.json()
            assert resp.status == 202
        async with http.post(f"{channel}/resume", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
    started = await listener.next("audio_stream_started", where=lambda m: m["request_id"] == retried["request_id"])
    assert started["kind"] == "track" and started["title"] == "Test Tone"


async def test_a_tail_too_short_to_hear_joins_the_last_chunk(server, connect, tmp_path):
    """A 25.02 s track is five chunks, the last 20 ms longer, not a sixth chunk of a few samples."""
    listener = await connect()
    await listener.next("snapshot")
    status, body = await upload(
        server, io.BytesIO(make_fixture(tmp_path, "flac", seconds=25.02).read_bytes()), "audio/flac"
    )
    assert status == 202 and body["chunks"] == 5, body
    chunks = [await listener.next("audio_chunk_ready", timeout=30) for _ in range(5)]
    assert [c["duration_ms"] for c in chunks[:4]] == [5000] * 4
    assert abs(chunks[4]["duration_ms"] - 5020) <= 2
