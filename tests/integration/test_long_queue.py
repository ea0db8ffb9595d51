"""A long queue costs every listener a bounded message: pushed views list the next requests and count
the rest, the queue endpoint lists them all, and audio made ahead for a request past the listed ones
sends nothing."""

import asyncio
import contextlib
import json

import pytest

from web import publish
from web.messages import QUEUE_LISTED

QUEUED = QUEUE_LISTED + 10


async def queue_up(server, count: int) -> list[str]:
    ids = []
    for n in range(count):
        response = await server.say(f"Announcement number {n}.")
        assert response.status == 202
        ids.append((await response.json())["request_id"])
    return ids


def waiting(view: dict) -> int:
    """Requests in line, the one on the air (or being made for it) included."""
    return view["queue_length"] + (view["now_playing"] is not None)


async def queue_view(server) -> dict:
    status, view = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert status == 200
    return view


async def all_made(server) -> dict:
    async with asyncio.timeout(30):
        while True:
            view = await queue_view(server)
            items = [*view["queue"], *([view["now_playing"]] if view["now_playing"] else [])]
            if len(items) == QUEUED and all(item.get("chunks_ready") == item["chunks_total"] for item in view["queue"]):
                return view
            await asyncio.sleep(0.05)


async def drain(listener, quiet_s: float = 0.5) -> None:
    """Record what arrives until nothing has for `quiet_s`."""
    with contextlib.suppress(TimeoutError):
        while True:
            async with asyncio.timeout(quiet_s):
                listener.messages.append(json.loads(await listener.ws.recv()))


async def test_listeners_get_the_head_of_a_long_queue_and_its_length_the_endpoint_lists_all(server, connect):
    await server.control("pause")  # nothing plays: every request waits, each made ahead of its turn
    ids = await queue_up(server, QUEUED)
    listener = await connect()
    snapshot = await listener.next("snapshot")
    assert waiting(snapshot) == QUEUED
    assert len(snapshot["queue"]) == QUEUE_LISTED
    assert [item["request_id"] for item in snapshot["queue"]] == ids[-snapshot["queue_length"] :][:QUEUE_LISTED]

    view = await queue_view(server)
    assert waiting(view) == QUEUED and len(view["queue"]) == view["queue_length"]
    assert [item["request_id"] for item in view["queue"]] == ids[-view["queue_length"] :]

    (last,) = await queue_up(server, 1)
    update = await listener.next("playback_queue_updated", where=lambda m: m["queue_length"] > view["queue_length"])
    assert update["queue_length"] == view["queue_length"] + 1
    assert len(update["queue"]) == QUEUE_LISTED and last not in [item["request_id"] for item in update["queue"]]


@pytest.mark.server_config({"tts": {"tone_delay_ms": 20}})
async def test_audio_made_ahead_past_the_listed_requests_sends_no_update(server, connect, monkeypatch):
    monkeypatch.setattr(publish, "PROGRESS_DELAY_S", 0.05)
    await server.control("pause")  # nothing plays: every request waits, each made ahead of its turn
    listener = await connect()
    await listener.next("snapshot")
    await queue_up(server, QUEUED)
    made = await all_made(server)
    await drain(listener)

    views = [m for m in listener.messages if m["type"] == "playback_queue_updated"]
    assert views[-1]["queue"] == made["queue"][:QUEUE_LISTED]  # the listed ones' progress was all shown
    repeats = [i for i in range(1, len(views)) if views[i] == views[i - 1]]
    assert repeats == [], f"{len(repeats)} of {len(views)} queue updates repeated the one before"


@pytest.mark.server_config({"timeline": {"generate_ahead_s": 1}})
async def test_audio_is_made_ahead_only_so_far_and_the_rest_as_its_turn_nears(server, connect):
    await server.control("pause")  # nothing plays: every request waits, each made ahead of its turn
    listener = await connect()
    await listener.next("snapshot")
    ids = await queue_up(server, 10)  # about 0.2 s of audio each: five make a second
    async with asyncio.timeout(20):
        while sum(await chunks_made(server)) < 4:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    made = await chunks_made(server)
    assert made.count(0) == 5, f"chunks made per request waiting: {made}"
    assert made == sorted(made, reverse=True), "made in line order"
    await server.control("resume")
    for request_id in ids:
        await listener.next("request_played", timeout=20, where=lambda m, rid=request_id: m["request_id"] == rid)


async def chunks_made(server) -> list[int]:
    """Per request waiting (the one being made for the air is not listed), its chunks made so far."""
    return [item["chunks_ready"] for item in (await queue_view(server))["queue"]]
