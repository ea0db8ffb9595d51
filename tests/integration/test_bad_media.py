"""Hostile media: ffmpeg reads only the file it was given, and every decode is bounded in time, memory and number.

All inputs are made at test time and are small; the slow ones are frozen-timestamp FLACs of silence,
which take ffmpeg seconds of loudness analysis per minute of audio.
"""

import asyncio
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile
from media import tone

from tests.server_process import ServerProcess, cli
from tts.encode import ffmpeg_exe

from .test_tracks import leftovers, make_fixture, upload

SECRET_HZ = 300


def secret_media(directory: Path) -> dict[str, Path]:
    """A tone outside the music folder, in the forms the reference-carrying formats point at."""
    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    for ext, options in {"m4a": ["-c:a", "aac"], "ts": ["-c:a", "aac", "-f", "mpegts"], "aac": ["-c:a", "aac"]}.items():
        made[ext] = tone(directory / f"secret.{ext}", 4, SECRET_HZ, *options)
    return made


def dash_manifest(target: str) -> bytes:
    return (
        f'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        f'mediaPresentationDuration="PT4S" minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">'
        f'<Period><AdaptationSet mimeType="audio/mp4"><Representation id="a" bandwidth="64000" codecs="mp4a.40.2">'
        f"<BaseURL>{target}</BaseURL></Representation></AdaptationSet></Period></MPD>"
    ).encode()


def hls_playlist(target: str) -> bytes:
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:4.0,\n{target}\n#EXT-X-ENDLIST\n".encode()


def frozen_flac(frames: int, channels: int = 2) -> bytes:
    """A FLAC of silent 4096-sample frames that all carry frame number 0, with no length in its header:
    its timestamps never advance, so a cap by timestamp never comes. ~14 bytes per 93 ms of audio."""
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((4096, channels), dtype=np.int16), 44100, format="FLAC", subtype="PCM_16")
    data = buf.getvalue()
    pos, last = 4, False
    while not last:  # metadata blocks: a flag-and-type byte, a 24-bit length
        last = bool(data[pos] & 0x80)
        pos += 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
    head = bytearray(data[:pos])
    head[21] &= 0xF0  # STREAMINFO: total samples (36 bits from here) and MD5 zeroed: length unknown
    head[22:26] = bytes(4)
    head[26:42] = bytes(16)
    return bytes(head) + data[pos:] * frames


def decoders(parent: int | None = None) -> list[int]:
    """Track decoders (ffmpeg normalizing loudness) started by `parent` (default: this process), by pid."""
    parent = parent or os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"ffmpeg" in cmdline[0] and any(b"loudnorm" in arg for arg in cmdline):
            found.append(int(entry.name))
    return found


async def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def queue_length(server) -> int:
    status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert status == 200
    return len(state["queue"]) + (state["now_playing"] is not None)


async def add_by_path(server, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/{server.channel}/tracks",
            json={"path": path},
            headers={"Authorization": f"Bearer {server.token}"},
        ) as resp:
            return resp.status, await resp.json()


def assert_refused_format(status: int, body: dict) -> None:
    assert status == 422, body
    assert body["error"]["code"] == "not_audio"
    assert "accepted formats" in body["error"]["message"] and "MP3" in body["error"]["message"], body


# --- ffmpeg reads only what it was given ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dash", "dash-file-url", "hls"])
async def test_an_upload_that_names_other_files_is_refused(server, tmp_path, kind):
    """An upload named song.mp3 whose body is a manifest or playlist naming a local file: 422, nothing queued."""
    secret = secret_media(tmp_path / "elsewhere")
    body = {
        "dash": dash_manifest(str(secret["m4a"])),
        "dash-file-url": dash_manifest(f"file://{secret['m4a']}"),
        "hls": hls_playlist(str(secret["ts"])),
    }[kind]
    status, reply = await upload(server, body, "audio/mpeg", filename="song.mp3")
    assert_refused_format(status, reply)
    assert await queue_length(server) == 0
    assert leftovers(server) == []


@pytest.mark.server_config({"music": {"folder": "MUSIC"}})
@pytest.mark.parametrize("kind", ["list.m3u8", "list-url.m3u8", "list.ffconcat", "list.mpd"])
async def test_a_music_folder_file_that_names_other_files_is_refused(server, tmp_path, kind):
    """{"path": ...} naming a playlist, concat list or manifest in the music folder: 422, nothing queued."""
    music = Path(server.station.config.music.folder)
    music.mkdir(parents=True, exist_ok=True)
    secret = secret_media(tmp_path / "elsewhere")
    (music / "inside.aac").write_bytes(secret["aac"].read_bytes())  # concat lists may only name neighbours
    (music / kind).write_bytes(
        {
            "list.m3u8": hls_playlist(str(secret["ts"])),
            "list-url.m3u8": hls_playlist(f"file://{secret['aac']}"),
            "list.ffconcat": b"ffconcat version 1.0\nfile 'inside.aac'\n",
            "list.mpd": dash_manifest(str(secret["m4a"])),
        }[kind]
    )
    status, reply = await add_by_path(server, kind)
    assert_refused_format(status, reply)
    assert await queue_length(server) == 0


@pytest.fixture(autouse=True)
def _music_folder_in_tmp(tmp_path, monkeypatch):
    """Relative music folders resolve inside the test's own directory."""
    monkeypatch.chdir(tmp_path)


async def test_a_file_that_is_not_audio_is_refused_with_the_accepted_formats(server, tmp_path):
    """A PNG image named song.mp3 is refused with 422 naming the accepted formats."""
    image = tmp_path / "cover.png"
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=red:size=32x32", "-frames:v", "1", str(image)],
        check=True,
        timeout=60,
    )
    status, reply = await upload(server, image.read_bytes(), "audio/mpeg", filename="song.mp3")
    assert_refused_format(status, reply)


# --- decoding is bounded ----------------------------------------------------------------------------------------


@pytest.mark.server_config({"music": {"max_track_minutes": 0.5}})
async def test_the_length_cap_holds_when_timestamps_never_advance(server):
    """Two hours of frozen-timestamp frames in 1 MB: refused as too long once the cap's worth has been decoded."""
    bomb = frozen_flac(2 * 3600 * 44100 // 4096)
    started = time.monotonic()
    async with asyncio.timeout(60):  # the whole two hours take minutes to decode
        status, reply = await upload(server, io.BytesIO(bomb), "audio/flac")
    assert status == 422 and "at most 30 s" in reply["error"]["message"], reply
    assert time.monotonic() - started < 60
    assert leftovers(server) == [] and decoders() == []


@pytest.mark.server_config({"music": {"decode_timeout_s": 1}})
async def test_a_decode_past_its_time_is_killed_and_leaves_nothing(server):
    """A decode still running after decode_timeout_s: ffmpeg killed, 422 saying so, no files left."""
    status, reply = await upload(server, frozen_flac(4000), "audio/flac")  # six minutes of audio: many seconds
    assert status == 422 and "within 1 s" in reply["error"]["message"], reply
    assert decoders() == []
    assert leftovers(server) == []


@pytest.mark.server_config({"music": {"decode_memory_mb": 64}})
async def test_a_decoder_gets_no_more_memory_than_allowed(server, tmp_path):
    """With decode_memory_mb too small for ffmpeg, a good file is refused: the cap is applied to the decoder."""
    status, reply = await upload(server, make_fixture(tmp_path, "flac").read_bytes(), "audio/flac")
    assert status == 422, reply
    assert leftovers(server) == []


@pytest.mark.server_config({"music": {"max_decodes": 4, "decode_wait_s": 2}})
async def test_decodes_at_once_are_capped_and_the_rest_told_to_retry(server):
    """Six slow uploads at once to one channel: never more than its share of the decoders (two of four);
    the ones that found none free get 503 and Retry-After."""
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(decoders()))
            await asyncio.sleep(0.02)

    async def one() -> tuple[int, dict, str | None]:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{server.base_url}/api/channels/{server.channel}/tracks",
                data=frozen_flac(2000, 8),
                headers={"Authorization": f"Bearer {server.token}", "Content-Type": "audio/flac"},
            ) as r:
                return r.status, await r.json(), r.headers.get("Retry-After")

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(one() for _ in range(6)))
    finally:
        watcher.cancel()
    busy = [(body, retry) for status, body, retry in results if status == 503]
    assert 1 <= most <= 2
    assert len(busy) == 4, [r[:2] for r in results]
    assert all(body["error"]["code"] == "decoders_busy" and int(retry) > 0 for body, retry in busy)
    assert sum(status == 202 for status, _, _ in results) == 2


async def test_a_decode_stops_when_its_client_leaves(server):
    """The uploader disconnects while its file decodes: ffmpeg is killed and nothing is left behind."""
    async with aiohttp.ClientSession() as http:
        post = asyncio.create_task(
            http.post(
                f"{server.base_url}/api/channels/{server.channel}/tracks",
                data=frozen_flac(4000, 8),
                headers={"Authorization": f"Bearer {server.token}", "Content-Type": "audio/flac"},
            )
        )
        assert await wait_until(lambda: decoders() != []), "the decode never started"
        post.cancel()
        await asyncio.gather(post, return_exceptions=True)
    assert await wait_until(lambda: decoders() == [], timeout=5), "ffmpeg kept decoding for nobody"
    assert await wait_until(lambda: leftovers(server) == [], timeout=5), leftovers(server)
    assert await queue_length(server) == 0


async def test_a_bed_stops_decoding_when_its_client_leaves(server, tmp_path):
    """A bed's files can take minutes to decode: when the producer who asked hangs up, the decode
    stops, nothing is left behind, and no bed goes on the air for nobody."""
    folder = tmp_path / "music" / "slow"
    folder.mkdir(parents=True)
    (folder / "endless.flac").write_bytes(frozen_flac(4000, 8))
    async with aiohttp.ClientSession() as http:
        put = asyncio.create_task(
            http.put(
                f"{server.base_url}/api/channels/{server.channel}/bed",
                json={"folder": "slow"},
                headers={"Authorization": f"Bearer {server.token}"},
            )
        )
        assert await wait_until(lambda: decoders() != []), "the decode never started"
        put.cancel()
        await asyncio.gather(put, return_exceptions=True)
    assert await wait_until(lambda: decoders() == [], timeout=5), "ffmpeg kept decoding for nobody"
    assert await wait_until(lambda: leftovers(server) == [], timeout=5), leftovers(server)
    await asyncio.sleep(1)
    status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert status == 200 and state["bed"] is None


@pytest.mark.server_config({"limits": {"max_queue": 3}})
async def test_the_queue_limit_holds_for_uploads_decoded_at_once(server, tmp_path):
    """Ten uploads at once against max_queue = 3: three are queued, the others get 429 and leave no audio.
    (Tracks long enough that the first cannot play out and free a place while the others decode.)"""
    data = make_fixture(tmp_path, "flac", seconds=10).read_bytes()
    results = await asyncio.gather(*(upload(server, data, "audio/flac") for _ in range(10)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [202] * 3 + [429] * 7, results
    assert await queue_length(server) <= 3
    queued = {body["request_id"] for status, body in results if status == 202}
    stored = {p.name for p in (server.station.config.data_path / "audio").iterdir()}
    assert stored <= queued


# --- children die with the server -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
async def test_decoders_die_with_the_server(tmp_path, how):
    """However the server stops (SIGTERM, SIGKILL), a decoder it started does not outlive it."""
    data_dir, config = tmp_path / "data", tmp_path / "config.toml"
    config.write_text('[tts]\nengine = "tone"\n[music]\nmax_track_minutes = 120\n')
    made = json.loads(cli("channel", "create", "table", "--json", data_dir=data_dir, config=config).stdout)
    server = ServerProcess(data_dir, config)
    await server.start()
    running: list[int] = []
    try:
        async with aiohttp.ClientSession() as http:
            post = asyncio.create_task(
                http.post(
                    f"{server.base_url}/api/channels/table/tracks",
                    data=frozen_flac(20000, 8),
                    headers={"Authorization": f"Bearer {made['producer_token']}", "Content-Type": "audio/flac"},
                )
            )
            assert await wait_until(lambda: decoders(server.proc.pid) != []), "the decode never started"
            running = decoders(server.proc.pid)
            os.kill(server.proc.pid, how)
            await asyncio.gather(post, return_exceptions=True)
        server.proc.wait(timeout=30)
        assert await wait_until(lambda: not any(alive(pid) for pid in running), timeout=5), (
            "a decoder outlived the server"
        )
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        for pid in running:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped) and still an ffmpeg decoder."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"loudnorm" in cmdline
