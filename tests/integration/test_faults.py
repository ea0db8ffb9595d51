"""Failures inside generation fail one request; the channel carries on."""

import errno
import json

import aiohttp
import pytest
import websockets
from conftest import start_server
from sqlalchemy.exc import OperationalError

from db.audio_files import FileAudioStore
from db.store import Store
from tts.tone_engine import ToneEngine


class CrashingEngine(ToneEngine):
    """Raises an arbitrary exception, as a buggy engine would."""

    async def synthesize(self, text: str):
        if "crash" in text:
            raise RuntimeError("segfault-ish")
        return await super().synthesize(text)


async def collect_until_played(ws_url: str, submit) -> tuple[list[str], list[dict]]:
    """Listen, submit, and gather every message until the last submitted request has played."""
    messages = []
    async with websockets.connect(ws_url) as ws:
        await ws.recv()
        ids = await submit()
        while True:
            message = json.loads(await ws.recv())
            messages.append(message)
            if message["type"] == "request_played" and message["request_id"] == ids[-1]:
                return ids, messages


async def test_engine_crash_fails_the_request_and_the_next_starts(tmp_path):
    """An engine raising an unexpected exception fails its request with a reason; the next one plays."""
    runner, server = await start_server(tmp_path, engine_factory=lambda config: CrashingEngine(ms_per_char=10))
    try:

        async def submit():
            return [(await (await server.say(t)).json())["request_id"] for t in ("Please crash now.", "Fine.")]

        ids, messages = await collect_until_played(server.ws_url(), submit)
        failed = [m for m in messages if m["type"] == "request_failed"]
        assert [m["request_id"] for m in failed] == [ids[0]]
        assert "crashed" in failed[0]["reason"]
    finally:
        await runner.cleanup()


async def test_failed_chunk_write_fails_the_request_and_the_channel_carries_on(tmp_path, monkeypatch):
    """A disk-full error while storing a chunk fails that request; the next request plays normally."""
    original = FileAudioStore._commit

    def commit(self, request_id, chunk_id, fmt):
        if request_id == doomed[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, request_id, chunk_id, fmt)

    doomed: list[str] = []
    monkeypatch.setattr(FileAudioStore, "_commit", commit)
    runner, server = await start_server(tmp_path, {"tts": {"tone_delay_ms": 100}})
    try:

        async def submit():
            first = (await (await server.say("Doomed request.")).json())["request_id"]
            doomed.append(first)
            return [first, (await (await server.say("Survivor.")).json())["request_id"]]

        ids, messages = await collect_until_played(server.ws_url(), submit)
        failed = [m for m in messages if m["type"] == "request_failed"]
        assert [m["request_id"] for m in failed] == [ids[0]]
        assert "No space left" in failed[0]["reason"]
        assert not any(m["type"] == "audio_chunk_ready" and m["request_id"] == ids[0] for m in messages)
    finally:
        await runner.cleanup()


@pytest.mark.server_config({"timeline": {"generation_timeout_s": 0.5}, "tts": {"tone_stall_marker": "[stall]"}})
async def test_stalled_request_in_the_middle_of_the_queue(server, connect):
    """A stall behind a healthy request fails only itself; the requests around it play."""
    listener = await connect()
    await listener.next("snapshot")
    ids = [(await (await server.say(t)).json())["request_id"] for t in ("Before.", "Now [stall].", "After.")]
    outcomes = []
    while len(outcomes) < 3:
        message = json.loads(await listener.ws.recv())
        if message["type"] in ("request_played", "request_failed"):
            outcomes.append((message["request_id"], message["type"]))
    assert sorted(outcomes) == sorted(
        [(ids[0], "request_played"), (ids[1], "request_failed"), (ids[2], "request_played")]
    )


async def test_lost_mp3_is_rebuilt_from_the_lossless_copy(server, connect):
    """If a crash left a chunk without its MP3, the next fetch rebuilds it from the FLAC."""
    listener = await connect()
    await listener.next("snapshot")
    await server.say("Rebuild me.")
    chunk = await listener.next("audio_chunk_ready")
    await listener.next("request_played")
    mp3 = server.station.audio.path(chunk["request_id"], chunk["chunk_id"], "mp3")
    original = mp3.read_bytes()
    mp3.unlink()
    async with aiohttp.ClientSession() as http:
        async with http.get(server.base_url + chunk["url"]) as resp:
            assert resp.status == 200
            assert await resp.read() == original  # the encoder is deterministic


async def test_database_locked_briefly_is_retried_and_nothing_is_lost(server, connect, monkeypatch):
    """Saves that hit 'database is locked' are retried; the request plays and is stored as played."""
    original, failures = Store.save, []

    async def flaky_save(self, *args, **kwargs):
        if len(failures) < 4:
            failures.append(1)
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        return await original(self, *args, **kwargs)

    listener = await connect()
    await listener.next("snapshot")
    monkeypatch.setattr(Store, "save", flaky_save)
    request_id = (await (await server.say("Locked, then fine.")).json())["request_id"]
    await listener.next("request_played", where=lambda m: m["request_id"] == request_id)
    stored = await server.station.store.request(request_id)
    assert len(failures) == 4 and stored.state == "played" and len(stored.chunks) == 1
