"""Broadcasts written straight to sockets by several processes reach every listener whole and in order,
and a listener that falls behind mid-stream still gets every message, through its transport and queue."""

import pytest
import websockets
from server_process import metric

from web import sendmany
from web.keys import HUB, METRICS
from web.sendmany import SocketWriter

pytestmark = pytest.mark.server_config({"tts": {"tone_delay_ms": 0}})

ON_AIR = {"playback_queue_updated", "audio_chunk_ready", "audio_stream_started", "request_played"}


def on_air(messages: list[dict]) -> list[tuple]:
    return [
        (m["type"], m.get("request_id"), m.get("seq"), m.get("queue") and len(m["queue"]))
        for m in messages
        if m["type"] in ON_AIR
    ]


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


async def heard_or_cut(listener, request_id: str) -> str:
    try:
        await listener.next("playback_queue_updated", where=lambda m: request_id in str(m["queue"]))
    except websockets.ConnectionClosedError as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 1011, exc
        return "cut"
    return "heard"


async def test_a_helper_that_dies_is_counted_and_replaced_and_its_listeners_told(server, connect, monkeypatch):
    """A killed helper: its share is written here or closed with 1011 (never silently skipped), the
    failure is counted in /metrics, and the next large broadcast runs with a fresh helper."""
    monkeypatch.setattr(sendmany, "HELPERS_FROM", 1)
    monkeypatch.setattr(sendmany, "RESTART_AFTER_S", 0)
    hub = server.app[HUB]
    hub.writer.close()
    hub.writer = SocketWriter(2, on_failure=server.app[METRICS].fanout_helper_failures.inc)
    listeners = [await connect() for _ in range(6)]
    for listener in listeners:
        await listener.next("snapshot")
    first = (await (await server.say("Before the failure.")).json())["request_id"]
    assert {await heard_or_cut(listener, first) for listener in listeners} == {"heard"}
    assert await metric(server, "broadcaster_fanout_helpers") == 1
    (helper,) = hub.writer._helpers
    helper.proc.kill()
    helper.proc.wait()
    second = (await (await server.say("After the failure.")).json())["request_id"]
    outcomes = [await heard_or_cut(listener, second) for listener in listeners]
    assert outcomes.count("heard") >= 3  # the server's own share always arrives
    assert await metric(server, "broadcaster_fanout_helper_failures_total") == 1
    third = (await (await server.say("And after that.")).json())["request_id"]
    for listener, outcome in zip(listeners, outcomes):
        if outcome == "heard":
            assert await heard_or_cut(listener, third) == "heard"
    assert await metric(server, "broadcaster_fanout_helpers") == 1
    assert hub.writer.helper_pids != [helper.proc.pid]
