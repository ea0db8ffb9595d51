"""The server's timeline runs on the clock given to create_app: a test steps it instead of sleeping
through playback. Half a minute of narration plays through here, a late joiner entering at the offset
the clock says, in a second or two of real time."""

from datetime import datetime

import pytest
import websockets
from conftest import Listener, SteppedClock, start_server

SECOND_OF_AUDIO_A_CHARACTER = {"tts": {"tone_ms_per_char": 1000}}


@pytest.fixture
async def stepped(tmp_path):
    runner, server = await start_server(tmp_path, SECOND_OF_AUDIO_A_CHARACTER, clock=SteppedClock())
    yield server
    await runner.cleanup()


async def test_a_narration_plays_through_on_a_stepped_clock_and_a_late_joiner_enters_at_its_offset(stepped):
    """Two sentences, 20 s and 9 s of audio, made at once; the clock stands still until the test steps
    it. A listener joining 5 s into the first sentence is told that offset; 2 s into the second, the
    queue says so; a step past the end plays the request out, and the runner, woken by the step,
    announces it without waiting the 29 s its last wait was timed for."""
    server = stepped
    early = Listener(await websockets.connect(server.ws_url()))
    await early.next("snapshot")
    assert (await server.say("A sentence of audio. And more.")).status == 202
    first = await early.next("audio_chunk_ready")
    second = await early.next("audio_chunk_ready")
    assert (first["duration_ms"], second["duration_ms"]) == (20_000, 9_000)

    server.advance(first["starts_at_ms"] + 5000 - server.clock())
    late = Listener(await websockets.connect(server.ws_url()))
    joined = await late.next("snapshot")
    assert joined["server_time_ms"] == server.clock()
    assert joined["now_playing"]["position"] == {"chunk_id": first["chunk_id"], "offset_ms": 5000}

    server.advance(second["starts_at_ms"] + 2000 - server.clock())
    status, queue = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert status == 200 and queue["now_playing"]["position"] == {"chunk_id": second["chunk_id"], "offset_ms": 2000}

    end_ms = second["starts_at_ms"] + second["duration_ms"]
    server.advance(end_ms + 1000 - server.clock())
    for listener in (early, late):
        played = await listener.next("request_played", timeout=5)
        assert played["ended_at_ms"] == end_ms
    await early.ws.close()
    await late.ws.close()


async def test_the_schedule_queues_its_item_when_the_clock_is_stepped_into_its_minute(tmp_path):
    """At 09:54:30 the schedule waits for the next minute; a step to 09:55:10 wakes it, and the 09:55
    item is queued at once, not when the wait timed on the clock before the step runs out."""
    monday_0954 = int(datetime(2026, 11, 23, 9, 54, 30).timestamp() * 1000)
    settings = {"schedule": [{"channel": "table", "cron": "55 9 * * 1-5", "say": "Stand-up in five minutes."}]}
    runner, server = await start_server(tmp_path, settings, clock=SteppedClock(monday_0954))
    try:
        listener = Listener(await websockets.connect(server.ws_url()))
        await listener.next("snapshot")
        server.advance(40_000)
        queued = await listener.next("audio_chunk_ready", timeout=5)
        assert queued["text"] == "Stand-up in five minutes."
        await listener.ws.close()
    finally:
        await runner.cleanup()
