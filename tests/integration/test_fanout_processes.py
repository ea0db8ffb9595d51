"""Broadcasts written straight to sockets by several processes reach every listener whole and in order,
and a listener that falls behind mid-stream still gets every message, through its transport and queue."""

import pytest

from web import sendmany
from web.keys import HUB
from web.sendmany import SocketWriter

pytestmark = pytest.mark.server_config({"tts": {"tone_delay_ms": 0}})

ON_AIR = {"playback_queue_updated", "audio_chunk_ready", "audio_stream_started", "request_played"}


def on_air(messages: list[dict]) -> list[tuple]:
    return [(m["type"], m.get("request_id"), m.get("seq"), m.get("queue") and len(m["queue"]))
            for m in messages if m["type"] in ON_AIR]


async def test_listeners_written_by_three_processes_get_the_same_messages_in_order(server, connect, monkeypatch):
    monkeypatch.setattr(sendmany, "HELPERS_FROM", 1)  # split even a handful of listeners between processes
    hub = server.app[HUB]
    hub.writer.close()
    hub.writer = SocketWriter(3)
    listeners = [await connect() for _ in range(7)]
    for listener in listeners:
        await listener.next("snapshot")
    ids = []
    for text in ("First one. With two sentences.", "Second request here.", "And a third. It has two."):
        response = await server.say(text)
        assert response.status == 202
        ids.append((await response.json())["request_id"])
    for listener in listeners:
        await listener.next("request_played", timeout=30, where=lambda m: m["request_id"] == ids[-1])
    expected = on_air(listeners[0].messages)
    assert [t for t, rid, *_ in expected if t == "request_played"] == ["request_played"] * 3
    assert sum(t == "audio_chunk_ready" for t, *_ in expected) == 5  # one chunk per sentence
    assert len(hub.writer.helper_pids) == 2
    for listener in listeners[1:]:
        assert on_air(listener.messages) == expected
