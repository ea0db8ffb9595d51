"""Audio in the database ([cluster] mode's store): a server on another machine, which never made the audio and
has none of the first one's files, serves every chunk and progressive stream of the first, and plays on the track
the first one queued."""

import asyncio
import io
import shutil

import aiohttp
import pytest
import soundfile
import websockets
from aiohttp.web import AppRunner, TCPSite
from conftest import FAST_TONES, Listener, merge
from media import tone

from broadcaster.config import config_from_dict
from broadcaster.runtime.accounts import create_channel
from db.audio_database import DatabaseAudioStore
from db.audio_store import CACHE_BYTES, open_audio_store
from tts.encode import ffmpeg_exe
from web.app import create_app
from web.keys import STATION


def shared_audio(data_dir, engine, shared=False, cache_bytes=CACHE_BYTES):
    """What the server builds once it runs in a cluster: the audio store in its database."""
    return open_audio_store(data_dir, engine, shared=True, cache_bytes=cache_bytes)


@pytest.fixture(autouse=True)
def audio_in_the_database(monkeypatch):
    monkeypatch.setattr("web.app.open_audio_store", shared_audio)


class Machine:
    """One server with a data directory of its own, on the shared database."""

    def __init__(self, data_dir, database_url: str, overrides: dict | None = None):
        settings = merge(FAST_TONES, {"server": {"database_url": database_url, "data_dir": str(data_dir)}})
        settings = merge(settings, overrides or {})
        self.app = create_app(config_from_dict(settings))
        self.runner = AppRunner(self.app)

    async def start(self) -> "Machine":
        await self.runner.setup()
        site = TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        assert isinstance(self.app[STATION].audio, DatabaseAudioStore)
        return self

    async def get(self, path: str) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.base_url + path) as resp:
                return resp.status, await resp.read()

    async def post(self, path: str, token: str, **kwargs) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.base_url + path, headers={"Authorization": f"Bearer {token}"}, **kwargs) as resp:
                assert resp.status == 202, await resp.text()
                return await resp.json()


async def decoded_seconds(mp3: bytes) -> float:
    """The length of an MP3 as ffmpeg decodes it."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-v", "error", "-i", "pipe:0", "-f", "wav", "pipe:1", stdin=-1, stdout=-1
    )
    wav, _ = await proc.communicate(mp3)
    info = soundfile.info(io.BytesIO(wav))
    return info.frames / info.samplerate


async def test_a_server_on_another_machine_serves_the_audio_and_plays_on_the_queued_track(tmp_path, postgres_url):
    """Server one speaks a narration, then takes a slow one and a track upload behind it, and stops before it made
    any of the track's audio; its data directory is removed. Server two, started with an empty one on the same
    PostgreSQL, makes every chunk of the track from the segments in the database and plays it to its end, and
    serves every chunk (MP3 and FLAC, the same bytes server one served) and the progressive streams."""
    one = await Machine(tmp_path / "one", postgres_url, {"tts": {"tone_delay_ms": 1500}}).start()
    made = await create_channel(one.app[STATION].store, "table")
    try:
        async with websockets.connect(one.base_url.replace("http", "ws") + "/ws/channels/table") as ws:
            listener = Listener(ws)
            await listener.next("snapshot")
            spoken = await one.post("/api/channels/table/requests", made.token, json={"text": "First words."})
            await listener.next("request_played", timeout=20, where=lambda m: m["request_id"] == spoken["request_id"])
            await one.post("/api/channels/table/requests", made.token, json={"text": "Slow. Slower. Slowest."})
            song = tone(tmp_path / "song.flac", 7, 440, "-ac", "2", "-c:a", "flac", tags={"title": "Seven Seconds"})
            track = await one.post(
                "/api/channels/table/tracks", made.token, data=song.read_bytes(), params={"filename": "song.flac"}
            )
        narration = [
            m["chunk_id"]
            for m in listener.messages
            if m["type"] == "audio_chunk_ready" and m["request_id"] == spoken["request_id"]
        ]
        assert len(narration) == 1
        served = {
            (c, fmt): await one.get(f"/api/audio/chunks/{c}?format={fmt}") for c in narration for fmt in ("mp3", "flac")
        }
        assert not (await one.app[STATION].store.request(track["request_id"])).chunks  # still behind the slow one
    finally:
        await one.runner.cleanup()
    shutil.rmtree(tmp_path / "one")  # nothing of server one's machine is left

    two = await Machine(tmp_path / "two", postgres_url).start()
    try:
        async with websockets.connect(two.base_url.replace("http", "ws") + "/ws/channels/table") as ws:
            listener = Listener(ws)
            await listener.next("snapshot")
            await listener.next("request_played", timeout=30, where=lambda m: m["request_id"] == track["request_id"])
        for (chunk_id, fmt), (status, data) in served.items():
            assert status == 200
            assert await two.get(f"/api/audio/chunks/{chunk_id}?format={fmt}") == (200, data)
        stored = await two.app[STATION].store.request(track["request_id"])
        assert len(stored.chunks) == 2  # 5 s and 2 s, both made here
        for chunk in stored.chunks:
            status, mp3 = await two.get(f"/api/audio/chunks/{chunk.chunk_id}")
            assert status == 200 and abs(await decoded_seconds(mp3) - chunk.duration_ms / 1000) < 0.1
        status, stream = await two.get(f"/api/audio/stream/{track['request_id']}")
        assert status == 200 and abs(await decoded_seconds(stream) - 7) < 0.2
        status, stream = await two.get(f"/api/audio/stream/{spoken['request_id']}")
        assert status == 200 and await decoded_seconds(stream) > 0.1
    finally:
        await two.runner.cleanup()


async def test_cleanup_purges_rows_and_audio_together_and_the_orphans(tmp_path, postgres_url):
    """The purge of a played request removes its chunks' audio from the database with its rows, and audio no
    request claims (a crash between the two) goes with the orphan sweep."""
    server = await Machine(tmp_path / "one", postgres_url, {"cleanup": {"retention_days": 0}}).start()
    made = await create_channel(server.app[STATION].store, "table")
    station = server.app[STATION]
    try:
        async with websockets.connect(server.base_url.replace("http", "ws") + "/ws/channels/table") as ws:
            listener = Listener(ws)
            await listener.next("snapshot")
            spoken = await server.post("/api/channels/table/requests", made.token, json={"text": "Old news."})
            chunk = await listener.next("audio_chunk_ready")
            await listener.next("request_played", where=lambda m: m["request_id"] == spoken["request_id"])
        assert (await server.get(chunk["url"]))[0] == 200
        await station.audio.put("ab" * 8, "cd" * 8, "flac", b"left by a crash")
        async with station.store.engine.begin() as conn:  # written long ago
            await conn.exec_driver_sql("UPDATE chunk_audio SET written_at_ms = 0 WHERE request_id = 'abababababababab'")
        summary = await station.cleanup()
        assert (summary["requests"], summary["orphans"]) == (1, 1) and summary["bytes"] > len(b"left by a crash")
        async with station.store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM chunk_audio")).scalar() == 0
        assert (await server.get(chunk["url"]))[0] == 404
    finally:
        await server.runner.cleanup()
