"""Producer actions over HTTP: skip the request on the air, cancel a queued one, retry a failed one."""

import asyncio
import logging

import aiohttp
import pytest
import websockets
from conftest import Listener, start_server

from broadcaster.core.channel import Channel
from broadcaster.errors import GenerationError
from tts.tone_engine import ToneEngine

LONG = "This sentence keeps the request on the air for a while. " * 4


async def act(server, request_id: str, action: str, token: str | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        url = f"{server.base_url}/api/channels/{server.channel}/requests/{request_id}/{action}"
        async with http.post(url, headers={"Authorization": f"Bearer {token or server.token}"}) as resp:
            return resp.status, await resp.json()


async def test_skip_stops_the_request_on_the_air_and_the_next_starts(server, connect):
    """Skipping the on-air request announces request_cancelled with the stop time and the next request follows."""
    listener = await connect()
    await listener.next("snapshot")
    first = (await (await server.say(LONG)).json())["request_id"]
    second = (await (await server.say("Next up.")).json())["request_id"]
    await listener.next("audio_chunk_ready")
    status, body = await act(server, first, "skip")
    assert (status, body["skipped"]) == (200, True)
    cancelled = await listener.next("request_cancelled")
    assert cancelled["request_id"] == first and cancelled["skipped"] is True
    started = await listener.next("audio_stream_started", where=lambda m: m["request_id"] == second)
    assert started["starts_at_ms"] >= cancelled["stopped_at_ms"]
    await listener.next("request_played", where=lambda m: m["request_id"] == second)


async def test_cancel_removes_a_queued_request(server, connect):
    """Cancelling a pending request takes it out of the queue; it never goes on the air."""
    listener = await connect()
    await listener.next("snapshot")
    first = (await (await server.say("On the air now.")).json())["request_id"]
    doomed = (await (await server.say("Never heard.")).json())["request_id"]
    status, _ = await act(server, doomed, "cancel")
    assert status == 200
    cancelled = await listener.next("request_cancelled")
    assert cancelled == {**cancelled, "request_id": doomed, "skipped": False}
    await listener.next("request_played", where=lambda m: m["request_id"] == first)
    assert not any(m["type"] == "audio_stream_started" and m["request_id"] == doomed for m in listener.messages)
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert state["recent"][0]["request_id"] == first
    assert any(r["request_id"] == doomed and r["status"] == "cancelled" for r in state["recent"])


@pytest.mark.server_config({"timeline": {"lead_ms": 1500, "min_lead_ms": 1500}})
async def test_cancelling_a_request_already_placed_behind_the_one_on_the_air_says_it_was_announced(server, connect):
    """With a lead longer than the request gap, the next request is placed (announced) before the one on
    the air ends: a cancel then stops announced audio, and the answer says so as the socket does."""
    listener = await connect()
    await listener.next("snapshot")
    await server.say("On the air now.")
    placed = (await (await server.say("Placed behind it.")).json())["request_id"]
    await listener.next("audio_stream_started", where=lambda m: m["request_id"] == placed)
    status, body = await act(server, placed, "cancel")
    assert (status, body["skipped"]) == (200, True), body
    cancelled = await listener.next("request_cancelled")
    assert cancelled["request_id"] == placed and cancelled["skipped"] is True


class FlakyEngine(ToneEngine):
    """Fails the first time it is asked to speak, then works: a transient TTS outage."""

    def __init__(self) -> None:
        super().__init__(ms_per_char=10)
        self.failed_once = False

    async def synthesize(self, text: str):
        if "Try me" in text and not self.failed_once:
            self.failed_once = True
            raise GenerationError("the TTS service hiccuped")
        return await super().synthesize(text)


async def test_retry_queues_a_failed_request_again(tmp_path):
    """Retrying a failed request queues its text as a new request, which plays."""
    runner, server = await start_server(tmp_path, engine_factory=lambda config: FlakyEngine())
    try:
        async with websockets.connect(server.ws_url()) as ws:
            listener = Listener(ws)
            await listener.next("snapshot")
            failed = (await (await server.say("Try me again.")).json())["request_id"]
            await listener.next("request_failed")
            status, body = await act(server, failed, "retry")
            assert status == 202 and body["request_id"] != failed
            await listener.next("request_played", where=lambda m: m["request_id"] == body["request_id"])
    finally:
        await runner.cleanup()


async def test_wrong_state_is_a_clear_conflict(server, connect):
    """Skipping a queued request, cancelling the on-air one, or retrying a pending one is a 409 that says why."""
    listener = await connect()
    await listener.next("snapshot")
    on_air = (await (await server.say(LONG)).json())["request_id"]
    queued = (await (await server.say("Waiting.")).json())["request_id"]
    await listener.next("audio_chunk_ready")
    for request_id, action, words in [
        (queued, "skip", "not on the air"),
        (on_air, "cancel", "on the air"),
        (queued, "retry", "failed or cancelled"),
    ]:
        status, body = await act(server, request_id, action)
        assert status == 409 and words in body["error"]["message"]
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert state["now_playing"]["request_id"] == on_air and [q["request_id"] for q in state["queue"]] == [queued]


async def test_actions_need_the_producer_token(server):
    """Without the right token every action is 401 and nothing changes; unknown ids are 404."""
    queued = (await (await server.say("Stay.")).json())["request_id"]
    for action in ("skip", "cancel", "retry"):
        status, body = await act(server, queued, action, token="bc_wrong")
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _ = await act(server, "0123456789abcdef", "cancel")
    assert status == 404
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{server.base_url}/api/channels/{server.channel}/producer", headers={"Authorization": "Bearer bc_wrong"}
        ) as resp:
            assert resp.status == 401
        async with http.get(
            f"{server.base_url}/api/channels/{server.channel}/producer",
            headers={"Authorization": f"Bearer {server.token}"},
        ) as resp:
            assert resp.status == 200


@pytest.mark.server_config({"tts": {"tone_delay_ms": 3000}})
async def test_the_head_still_being_made_may_be_cancelled_as_nothing_of_it_was_heard(server, connect):
    """The first request's first sentence is still being synthesized: it is not on the air, so a cancel
    stops it (docs/protocol.md), as a skip would; it was 409 'on the air; skip it instead'."""
    listener = await connect()
    await listener.next("snapshot")
    first = (await (await server.say("Slow to make.")).json())["request_id"]
    status, body = await act(server, first, "cancel")
    assert (status, body.get("skipped")) == (200, False), body
    cancelled = await listener.next("request_cancelled")
    assert cancelled["request_id"] == first and cancelled["skipped"] is False


DOOMED = "Cancelled as it starts."


async def test_a_request_gone_before_its_start_is_recorded_is_no_crash_of_the_worker(
    server, connect, caplog, monkeypatch
):
    """A cancel that lands between the worker taking a request up and its start being recorded makes
    that record fail (the request left the line): the worker goes on, it does not log a crash and stall."""
    recorded = Channel.generation_started

    def gone_first(channel: Channel, request_id: str, now_ms: int):
        if channel.find_request(request_id).text == DOOMED:  # as when a cancel's step came first
            raise KeyError(f"request {request_id} is not in the line")
        return recorded(channel, request_id, now_ms)

    monkeypatch.setattr(Channel, "generation_started", gone_first)
    listener = await connect()
    await listener.next("snapshot")
    with caplog.at_level(logging.ERROR):
        doomed = (await (await server.say(DOOMED)).json())["request_id"]
        assert (await act(server, doomed, "cancel"))[0] == 200
        await listener.next("request_cancelled", where=lambda m: m["request_id"] == doomed)
        after = (await (await server.say("The next one.")).json())["request_id"]
        await listener.next("request_played", where=lambda m: m["request_id"] == after)
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]


async def test_a_submit_whose_caller_leaves_mid_write_is_queued_whole_or_not_at_all(server, monkeypatch):
    """The client hangs up while its request's row is being written (the handler is cancelled): the row
    was committed but the step that queues it never ran, so the channel did not have it and a restart
    put it on the air. Now a step once begun runs to its end: the line and the database agree."""
    station = server.station
    runner = await station.runner(server.channel)
    writing = asyncio.Event()
    insert = station.store.insert_request

    async def slow_insert(*args, **kwargs):
        writing.set()
        await asyncio.sleep(0.05)
        return await insert(*args, **kwargs)

    monkeypatch.setattr(station.store, "insert_request", slow_insert)
    await station.pause(server.channel)  # nothing leaves the line while it is looked at
    submitting = asyncio.create_task(station.submit(server.channel, "Sent by a client that left."))
    await writing.wait()
    submitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitting
    async with runner.saved:  # the step, finished for nobody
        in_line = [r.text for r in runner.channel.line]
    stored, _ = await station.store.load_line(runner.channel_id, server.channel)
    assert in_line == [r.text for r in stored] == ["Sent by a client that left."]
