"""Progress-only queue updates (synthesis began, a chunk made ahead) wait a moment, so that the next
announcement carries them, and still go out alone when nothing else comes."""

import pytest

from web import publish


def queue_updates_before(messages: list[dict], kind: str) -> list[dict]:
    until = next(i for i, m in enumerate(messages) if m["type"] == kind)
    return [m for m in messages[:until] if m["type"] == "playback_queue_updated"]


async def listen_and_say(server, connect, text: str):
    """A listener past its snapshot, and the id of the narration submitted after it."""
    listener = await connect()
    await listener.next("snapshot")
    response = await server.say(text)
    return listener, (await response.json())["request_id"]


@pytest.mark.server_config({"tts": {"tone_delay_ms": 0}})
async def test_synthesis_starting_rides_with_the_stream_start(server, connect, monkeypatch):
    """With the delay longer than synthesis, the request's start costs no broadcast of its own."""
    monkeypatch.setattr(publish, "PROGRESS_DELAY_S", 30)
    listener, request_id = await listen_and_say(server, connect, "One sentence. And a second one.")
    await listener.next("request_played", timeout=30, where=lambda m: m["request_id"] == request_id)
    (submitted,) = queue_updates_before(listener.messages, "audio_stream_started")
    assert [item["status"] for item in submitted["queue"]] == ["pending"]
    started = listener.messages.index(next(m for m in listener.messages if m["type"] == "audio_stream_started"))
    same_write = listener.messages[started : started + 4]
    assert "playback_queue_updated" in [m["type"] for m in same_write]  # the owed view came with the start


@pytest.mark.server_config({"tts": {"tone_delay_ms": 1500}})
async def test_synthesis_starting_is_announced_alone_when_nothing_follows(server, connect, monkeypatch):
    """When synthesis takes longer than the delay, listeners see the request leave the queue (its synthesis
    began: it is next on the air) before its audio is announced."""
    monkeypatch.setattr(publish, "PROGRESS_DELAY_S", 0.05)
    listener, request_id = await listen_and_say(server, connect, "A slow sentence.")
    await listener.next("audio_stream_started", timeout=30, where=lambda m: m["request_id"] == request_id)
    statuses = [
        [item["status"] for item in m["queue"] if item["request_id"] == request_id]
        for m in queue_updates_before(listener.messages, "audio_stream_started")
    ]
    assert statuses == [["pending"], []]
