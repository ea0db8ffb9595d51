"""`broadcaster channel delete`: a channel goes with its rows and its audio (its beds' tracks too), and
nothing of any other channel; never beneath a running server, never without --yes."""

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import websockets
from conftest import start_server
from media import tone
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from broadcaster.runtime.accounts import create_channel


async def cli(tmp_path, database_url: str, *args: str) -> subprocess.CompletedProcess:
    """In a thread: a server in this process keeps running (and committing) while the command does."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "broadcaster", "channel", *args, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"BROADCASTER_DATABASE_URL": database_url},
    )


async def say_until_made(live, text: str, count: int, token: str | None = None, channel: str | None = None) -> None:
    """Say `text` and return once `count` of its chunks are announced: listening from before the POST,
    since a chunk announced before the socket connects is only in its snapshot."""
    async with websockets.connect(live.ws_url(channel)) as ws:
        assert (await live.say(text, token=token, channel=channel)).status == 202
        seen = 0
        async with asyncio.timeout(20):
            while seen < count:
                seen += json.loads(await ws.recv())["type"] == "audio_chunk_ready"


async def rows(database_url: str) -> dict[str, list]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return {
                "channels": sorted((await conn.execute(text("SELECT name FROM channels"))).scalars()),
                "requests": sorted((await conn.execute(text("SELECT id FROM playback_requests"))).scalars()),
                "chunks": sorted((await conn.execute(text("SELECT request_id FROM audio_chunks"))).scalars()),
            }
    finally:
        await engine.dispose()


async def test_delete_takes_a_channel_its_rows_and_its_audio_and_nothing_else(tmp_path, monkeypatch, database_url):
    (tmp_path / "music" / "ambience").mkdir(parents=True)
    tone(tmp_path / "music" / "ambience" / "hum.wav", 3, 100)
    monkeypatch.chdir(tmp_path)  # the default music folder is ./music
    runner, live = await start_server(tmp_path, {"server": {"database_url": database_url}})
    try:
        other = await create_channel(live.station.store, "other")
        for channel, token in ((live.channel, live.token), (other.name, other.token)):
            await say_until_made(live, "One sentence. And another.", 2, token=token, channel=channel)
        async with aiohttp.ClientSession() as http:
            async with http.put(
                f"{live.base_url}/api/channels/{live.channel}/bed",
                json={"path": "ambience/hum.wav", "fade_ms": 0},
                headers={"Authorization": f"Bearer {live.token}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                bed_track = (await resp.json())["bed"]["tracks"][0]["track_id"]
        refused = await cli(tmp_path, database_url, "delete", live.channel, "--yes")
        assert refused.returncode == 2 and "serving this database" in refused.stderr, refused.stderr
        assert "stop every one before 'broadcaster channel delete'" in refused.stderr
    finally:
        await runner.cleanup()
    before = await rows(database_url)
    assert before["channels"] == ["other", live.channel]
    audio = tmp_path / "data" / "audio"
    stored = {path.name for path in audio.iterdir()}
    assert bed_track in stored and set(before["requests"]) <= stored

    unsure = await cli(tmp_path, database_url, "delete", live.channel)
    assert unsure.returncode == 2 and "add --yes" in unsure.stderr, unsure.stderr
    assert await rows(database_url) == before

    done = await cli(tmp_path, database_url, "delete", live.channel, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted channel {live.channel}: 2 requests and tracks" in done.stdout
    after = await rows(database_url)
    assert after["channels"] == ["other"]
    assert len(after["requests"]) == 1 and set(after["chunks"]) == set(after["requests"])
    assert {path.name for path in audio.iterdir()} == set(after["requests"])  # the other channel's audio stays

    unknown = await cli(tmp_path, database_url, "delete", live.channel, "--yes")
    assert unknown.returncode == 2 and f"no channel named {live.channel!r}" in unknown.stderr


async def test_a_deleted_channel_can_be_made_again_and_starts_empty(tmp_path):
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'broadcaster.db'}"
    runner, live = await start_server(tmp_path)
    try:
        await say_until_made(live, "Before.", 1)
    finally:
        await runner.cleanup()
    assert (await cli(tmp_path, database_url, "delete", live.channel, "--yes")).returncode == 0
    made = await cli(tmp_path, database_url, "create", live.channel)
    assert made.returncode == 0 and "producer token: bc_" in made.stdout, made.stderr
    assert await rows(database_url) == {"channels": [live.channel], "requests": [], "chunks": []}
