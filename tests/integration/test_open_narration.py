"""Open narrations through the real server: text appended while it is spoken, from HTTP, from the Python
client and from `broadcaster say --stream`, and across a SIGKILL and restart."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import websockets
from server_process import ServerProcess, cli

from broadcaster.client import OpenNarration, ProducerError

# Tones of 40 ms a character: a sentence of 30 characters sounds 1.2 s, long enough to append the next in time.
SLOW_TONES = {"tts": {"tone_ms_per_char": 40}, "timeline": {"open_idle_flush_ms": 60_000}}


async def post(server, path: str, body: object, token: str | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token or server.token}"}
        async with http.post(f"{server.base_url}/api/channels/table{path}", json=body, headers=headers) as resp:
            return resp.status, await resp.json()


async def open_request(server, text: str = "") -> str:
    status, body = await post(server, "/requests", {"text": text, "open": True})
    assert status == 202 and body["open"] is True, body
    return body["request_id"]


async def append(server, request_id: str, text: str, final: bool = False) -> dict:
    status, body = await post(server, f"/requests/{request_id}/text", {"text": text, "final": final})
    assert status == 202, body
    return body


async def seen(listener, kind: str, where) -> dict:
    """A message already received, or the next one like it."""
    found = [m for m in listener.messages if m["type"] == kind and where(m)]
    return found[0] if found else await listener.next(kind, where=where)


def chunks_of(listener, request_id: str) -> list[dict]:
    return [m for m in listener.messages if m["type"] == "audio_chunk_ready" and m["request_id"] == request_id]


@pytest.mark.server_config(SLOW_TONES)
async def test_sentences_appended_with_pauses_play_in_order_with_only_the_sentence_gap(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    rid = await open_request(server, "The door")
    await asyncio.sleep(0.3)
    assert chunks_of(listener, rid) == []  # an unfinished sentence waits for more text
    await append(server, rid, " creaks open on rusted hinges. A")
    first = await listener.next("audio_chunk_ready", where=lambda m: m["request_id"] == rid)
    assert first["text"] == "The door creaks open on rusted hinges."  # announced before the next is sent
    for piece in (" cold draught", " snakes across the floor. Somewhere", " below, water drips."):
        await asyncio.sleep(0.25)
        await append(server, rid, piece)
    await asyncio.sleep(0.25)
    await append(server, rid, " Then silence.", final=True)
    closed = await listener.next("request_closed", where=lambda m: m["request_id"] == rid)
    assert closed["chunks_total"] == 4
    await listener.next("request_played", where=lambda m: m["request_id"] == rid, timeout=20)
    chunks = chunks_of(listener, rid)
    assert [c["text"] for c in chunks] == [
        "The door creaks open on rusted hinges.",
        "A cold draught snakes across the floor.",
        "Somewhere below, water drips.",
        "Then silence.",
    ]
    gaps = [b["starts_at_ms"] - (a["starts_at_ms"] + a["duration_ms"]) for a, b in zip(chunks, chunks[1:])]
    assert gaps == [120] * 3  # the configured sentence gap, nothing more
    assert not [m for m in listener.messages if m["type"] == "timeline_shifted"]
    _, state = await server.get_json("/api/channels/table/audio/queue")
    assert state["recent"][0]["text"] == (
        "The door creaks open on rusted hinges. A cold draught snakes across the floor. Somewhere below, "
        "water drips. Then silence."
    )


@pytest.mark.server_config(SLOW_TONES)
async def test_the_queue_waits_for_the_open_narration_and_a_dry_spell_is_an_underrun(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    rid = await open_request(server, "Short one. ")
    await append(server, rid, "Next")  # completes the first sentence
    await listener.next("audio_chunk_ready", where=lambda m: m["request_id"] == rid)
    later = (await (await server.say("After the story.")).json())["request_id"]
    await asyncio.sleep(1.5)  # the story's only sentence has played: it waits, open, in silence
    queue_started = [m for m in listener.messages if m["type"] == "audio_stream_started" and m["request_id"] == later]
    assert queue_started == []
    _, state = await server.get_json("/api/channels/table/audio/queue")
    assert state["now_playing"]["request_id"] == rid and state["now_playing"]["open"] is True
    await append(server, rid, " one, then the end.", final=True)
    shifted = await listener.next("timeline_shifted", where=lambda m: m["request_id"] == rid)
    assert shifted["shift_ms"] > 0
    await listener.next("request_played", where=lambda m: m["request_id"] == rid)
    last = chunks_of(listener, rid)[-1]
    started = await seen(listener, "audio_stream_started", lambda m: m["request_id"] == later)
    assert started["starts_at_ms"] == last["starts_at_ms"] + last["duration_ms"] + 200  # after the story and the gap


@pytest.mark.server_config({"tts": {"tone_ms_per_char": 20}, "timeline": {"open_idle_flush_ms": 400}})
async def test_an_unfinished_sentence_is_spoken_after_the_idle_flush(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    rid = await open_request(server, "And then the lantern")
    chunk = await listener.next("audio_chunk_ready", where=lambda m: m["request_id"] == rid, timeout=5)
    assert chunk["text"] == "And then the lantern"
    await append(server, rid, " flickered out.", final=True)
    chunk = await listener.next("audio_chunk_ready", where=lambda m: m["request_id"] == rid)
    assert chunk["text"] == "flickered out."  # a new sentence after the flush


@pytest.mark.server_config({"timeline": {"open_idle_flush_ms": 200, "open_idle_timeout_s": 1}})
async def test_an_idle_open_narration_is_closed_with_what_it_has(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    rid = await open_request(server, "Said and done. And")
    played = await listener.next("request_played", where=lambda m: m["request_id"] == rid, timeout=10)
    assert played["request_id"] == rid
    assert [c["text"] for c in chunks_of(listener, rid)] == ["Said and done.", "And"]
    empty = await open_request(server)
    cancelled = await listener.next("request_cancelled", where=lambda m: m["request_id"] == empty, timeout=10)
    assert cancelled["request_id"] == empty
    status, body = await post(server, f"/requests/{empty}/text", {"text": "Too late."})
    assert status == 409 and "cancelled" in body["error"]["message"]


async def test_appends_that_cannot_be_taken_are_refused_and_change_nothing(server):
    rid = await open_request(server, "Once upon a time")
    plain = (await (await server.say("A plain request.")).json())["request_id"]
    cases = [
        (f"/requests/{rid}/text", {"text": 5}, 400, "string"),
        (f"/requests/{rid}/text", {"text": "x", "final": "yes"}, 400, "final"),
        (f"/requests/{rid}/text", {"text": "x", "voice": "bob"}, 400, "only"),
        (f"/requests/{rid}/text", {}, 400, "text"),
        (f"/requests/{rid}/text", ["text"], 400, "object"),
        (f"/requests/{rid}/text", {"text": "x" * 5000}, 400, "5000"),
        (f"/requests/{rid}/text", {"text": "\ud800"}, 400, "Unicode"),
        ("/requests/0123456789abcdef/text", {"text": "x"}, 404, "no playback request"),
        ("/requests/not-an-id/text", {"text": "x"}, 404, ""),
        (f"/requests/{plain}/text", {"text": "More."}, 409, "closed"),
    ]
    for path, body, status, words in cases:
        got, answer = await post(server, path, body)
        assert got == status and words in answer["error"]["message"], (path, body, answer)
    got, answer = await post(server, f"/requests/{rid}/text", {"text": "x"}, token="wrong-token")
    assert got == 401
    _, state = await server.get_json("/api/channels/table/audio/queue")
    story = next(r for r in [state["now_playing"], *state["queue"]] if r and r["request_id"] == rid)
    assert story["text"] == "Once upon a time" and story["open"] is True
    await append(server, rid, ", the end.", final=True)
    got, answer = await post(server, f"/requests/{rid}/text", {"text": " More."})
    assert got == 409 and "closed" in answer["error"]["message"]
    got, answer = await post(server, "/requests", {"text": "x", "open": "yes"})
    assert got == 400 and "open" in answer["error"]["message"]


async def test_an_open_narration_can_be_skipped_while_it_waits_for_text(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    rid = await open_request(server, "Hello there. And")
    await listener.next("audio_chunk_ready", where=lambda m: m["request_id"] == rid)
    status, _ = await post(server, f"/requests/{rid}/skip", {})
    assert status == 200
    await listener.next("request_cancelled", where=lambda m: m["request_id"] == rid)
    status, body = await post(server, f"/requests/{rid}/text", {"text": " more."})
    assert status == 409 and "cancelled" in body["error"]["message"]


@pytest.mark.server_config(SLOW_TONES)
async def test_the_python_client_streams_words_as_they_come(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    words = "The innkeeper looks up. You are late, he says. The others left at dawn.".split(" ")
    async with OpenNarration(server.base_url, "table", server.token) as story:
        for word in words:
            await story.write(word + " ")
            await asyncio.sleep(0.05)
            if word == "late,":  # the first sentence was complete three words ago: it is on the air by now
                first = await listener.next("audio_chunk_ready", where=lambda m: m["request_id"] == story.request_id)
                assert first["text"] == "The innkeeper looks up."
    assert story.answer["open"] is False and story.answer["sentences"] == 3
    await listener.next("request_played", where=lambda m: m["request_id"] == story.request_id, timeout=20)
    assert [c["text"] for c in chunks_of(listener, story.request_id)] == [
        "The innkeeper looks up.",
        "You are late, he says.",
        "The others left at dawn.",
    ]
    with pytest.raises(ProducerError) as refused:
        async with OpenNarration(server.base_url, "table", "wrong-token"):
            pass
    assert refused.value.status == 401


CONFIG = """
[tts]
engine = "tone"
tone_ms_per_char = 40

[timeline]
lead_ms = 300
sentence_gap_ms = 100
request_gap_ms = 200
open_idle_flush_ms = 60000
"""


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path, str]:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    made = cli("channel", "create", "table", "--json", data_dir=data_dir, config=config).stdout
    return data_dir, config, json.loads(made)["producer_token"]


async def test_say_stream_speaks_standard_input_as_it_arrives(paths):
    data_dir, config, token = paths
    server = ServerProcess(data_dir, config)
    await server.start()
    say = [sys.executable, "-m", "broadcaster", "say", "table", "--stream", "--server", server.base_url]
    say += ["--token", token, "--config", str(config)]
    try:
        ws_url = "ws" + server.base_url.removeprefix("http") + "/ws/channels/table"
        async with websockets.connect(ws_url) as ws:
            proc = await asyncio.create_subprocess_exec(*say, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            proc.stdin.write(b"Rain on the roof. The fire ")
            await proc.stdin.drain()
            first = await _next_chunk(ws)
            assert first["text"] == "Rain on the roof."  # while the pipe is still open
            proc.stdin.write(b"crackles. Somebody knocks")
            proc.stdin.close()
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0
            answer = json.loads(out)
            assert answer["open"] is False and answer["sentences"] == 3
            texts = [(await _next_chunk(ws))["text"] for _ in range(2)]
            assert texts == ["The fire crackles.", "Somebody knocks"]
    finally:
        server.stop()


async def _next_chunk(ws) -> dict:
    async with asyncio.timeout(10):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "audio_chunk_ready":
                return message


async def test_an_open_narration_survives_a_crash_and_takes_more_text_after_the_restart(paths):
    """SIGKILL while a narration is open: after the restart it is still open with everything appended
    (its unfinished tail too), takes more text, and plays every sentence once, in order."""
    data_dir, config, token = paths
    server = ServerProcess(data_dir, config)
    await server.start()
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{server.base_url}/api/channels/table/requests"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"text": "Before the crash. Half a", "open": True}, headers=headers) as r:
                rid = (await r.json())["request_id"]
            await asyncio.sleep(0.5)
            server.kill()
            await server.start()
            url = f"{server.base_url}/api/channels/table/requests"
            ws_url = "ws" + server.base_url.removeprefix("http") + "/ws/channels/table"
            async with websockets.connect(ws_url) as ws:
                snapshot = json.loads(await ws.recv())
                story = snapshot["now_playing"] or snapshot["queue"][0]
                assert story["request_id"] == rid and story["open"] is True
                async with http.post(f"{url}/{rid}/text", json={"text": " sentence after it."}, headers=headers) as r:
                    assert r.status == 202
                async with http.post(f"{url}/{rid}/text", json={"text": "", "final": True}, headers=headers) as r:
                    assert r.status == 202 and (await r.json())["open"] is False
                made = []
                async with asyncio.timeout(15):
                    while (message := json.loads(await ws.recv()))["type"] != "request_played":
                        if message["type"] == "audio_chunk_ready":
                            made.append(message["text"])
        assert made == ["Half a sentence after it."]  # the sentence from before the crash is not made again
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base_url}/api/channels/table/audio/queue") as r:
                recent = (await r.json())["recent"][0]
        assert recent["request_id"] == rid and recent["status"] == "played"
        assert recent["text"] == "Before the crash. Half a sentence after it."
    finally:
        server.stop()


@pytest.mark.server_config({"limits": {"text_appends_per_second": 0.1, "text_append_burst": 2}})
async def test_appends_over_their_rate_are_refused_and_producer_writes_are_not_used_up(server):
    rid = await open_request(server, "One")
    await append(server, rid, " two")
    await append(server, rid, " three")
    status, body = await post(server, f"/requests/{rid}/text", {"text": " four"})
    assert status == 429 and "appends a second to open narrations" in body["error"]["message"]
    assert "send text in larger pieces" in body["error"]["message"]
    _, state = await server.get_json("/api/channels/table/audio/queue")
    story = next(r for r in [state["now_playing"], *state["queue"]] if r and r["request_id"] == rid)
    assert story["text"] == "One two three"  # the refused append changed nothing
    assert (await server.say("Producer writes still go through.")).status == 202
