"""Cleanup purges old played and failed audio, rows and bytes together, and leaves no orphans."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

import aiohttp
import pytest

pytestmark = pytest.mark.server_config({"cleanup": {"retention_days": 0}})


async def play_one(server, connect, text: str) -> tuple[str, list[str]]:
    listener = await connect()
    await listener.next("snapshot")
    request_id = (await (await server.say(text)).json())["request_id"]
    await listener.next("request_played", where=lambda m: m["request_id"] == request_id)
    chunks = [m["chunk_id"] for m in listener.messages if m["type"] == "audio_chunk_ready"]
    return request_id, chunks


def make_orphan(audio_root, name: str = "ab" * 8, age_s: float = 86_400):
    orphan = audio_root / name
    orphan.mkdir()
    (orphan / "deadbeefdeadbeef.mp3").write_bytes(b"x" * 100)
    old = time.time() - age_s
    os.utime(orphan, (old, old))
    return orphan


async def test_cleanup_removes_rows_files_and_orphans(server, connect):
    """Purging deletes the played request's rows and audio directory, and an old orphan directory."""
    request_id, chunk_ids = await play_one(server, connect, "Old news. Gone soon.")
    audio_root = server.station.audio.root
    orphan = make_orphan(audio_root)
    # an hour old, and claimed by nothing yet: it may be a bed whose folder is still being decoded
    making = make_orphan(audio_root, "cd" * 8, age_s=3600)
    assert (audio_root / request_id).is_dir()
    summary = await server.station.cleanup()
    assert summary["requests"] == 1 and summary["orphans"] == 1 and summary["bytes"] > 0
    assert not (audio_root / request_id).exists() and not orphan.exists()
    assert making.exists()
    shutil.rmtree(making)
    assert await server.station.store.request(request_id) is None
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/api/audio/chunks/{chunk_ids[0]}") as resp:
            assert resp.status == 404
    assert sorted(p.name for p in audio_root.iterdir()) == []


@pytest.mark.server_config({"tts": {"tone_delay_ms": 300}})
async def test_cleanup_leaves_requests_on_the_air_alone(server, connect):
    """Audio of requests still queued or playing is never purged."""
    listener = await connect()
    await listener.next("snapshot")
    request_id = (await (await server.say("Still talking. Still going. Not done yet.")).json())["request_id"]
    await listener.next("audio_chunk_ready")
    summary = await server.station.cleanup()
    assert summary["requests"] == 0
    assert (server.station.audio.root / request_id).is_dir()
    await listener.next("request_played")


async def test_cleanup_command_is_safe_while_the_server_runs(server, connect, tmp_path):
    """`broadcaster cleanup` from cron purges the same database and files while the server keeps serving."""
    request_id, _ = await play_one(server, connect, "For the cron job.")
    config = tmp_path / "cron.toml"
    config.write_text("[cleanup]\nretention_days = 0\n")
    out = await asyncio.to_thread(  # in a thread: the server in this process serves on meanwhile
        subprocess.run,
        [
            sys.executable,
            "-m",
            "broadcaster",
            "cleanup",
            "--config",
            str(config),
            "--data-dir",
            str(server.station.config.data_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1])["requests"] == 1
    assert "purged 1 finished requests older than 0 days" in out.stderr
    assert not (server.station.audio.root / request_id).exists()
    again, _ = await play_one(server, connect, "The server carries on.")
    assert (server.station.audio.root / again).is_dir()


async def test_cleanup_removes_uploads_left_by_a_crash(server):
    """A half-received upload older than the grace period is removed by cleanup."""
    uploads = server.station.config.data_path / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    stale = uploads / "abc.upload"
    stale.write_bytes(b"x" * 1000)
    old = time.time() - 86_400
    os.utime(stale, (old, old))
    fresh = uploads / "def.upload"
    fresh.write_bytes(b"y")
    summary = await server.station.cleanup()
    assert not stale.exists() and fresh.exists() and summary["orphans"] == 1


def test_cleanup_of_a_data_dir_without_a_database_says_so(tmp_path):
    """A typo in the cron line's --data-dir is an error, not an empty database purged forever."""
    missing = tmp_path / "no-such-dir"
    done = subprocess.run(
        [sys.executable, "-m", "broadcaster", "cleanup", "--data-dir", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "expected a Broadcaster database at" in done.stderr
    assert not missing.exists()
