"""A channel on the air end to end: a real server on loopback, real WebSocket listeners."""

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import websockets
from conftest import FAST_TONES

from tts.encode import ffmpeg_exe


def played_chunks(messages: list[dict]) -> list[dict]:
    """Chunks as finally scheduled (a timeline_shifted replaces the start time)."""
    chunks: dict[str, dict] = {}
    for m in messages:
        if m["type"] == "audio_chunk_ready":
            chunks[m["chunk_id"]] = dict(m)
        elif m["type"] == "timeline_shifted":
            chunks[m["chunk_id"]]["starts_at_ms"] = m["starts_at_ms"]
    return sorted(chunks.values(), key=lambda c: c["starts_at_ms"])


async def test_three_requests_play_in_order_without_overlap_or_extra_gap(server, connect):
    """Three requests submitted back to back play in submission order, separated by exactly the configured gaps."""
    listener = await connect()
    await listener.next("snapshot")
    ids = []
    for text in ["First request. It has two sentences.", "Second one here.", "Third and last. Goodbye now!"]:
        resp = await server.say(text)
        assert resp.status == 202
        ids.append((await resp.json())["request_id"])
    for _ in ids:
        await listener.next("request_played", timeout=20)
    chunks = played_chunks(listener.messages)
    assert [c["request_id"] for c in chunks] == [ids[0]] * 2 + [ids[1]] + [ids[2]] * 2
    timeline = FAST_TONES["timeline"]
    for before, after in zip(chunks, chunks[1:]):
        gap = after["starts_at_ms"] - (before["starts_at_ms"] + before["duration_ms"])
        same_request = before["request_id"] == after["request_id"]
        assert gap == (timeline["sentence_gap_ms"] if same_request else timeline["request_gap_ms"])
    started = [m["request_id"] for m in listener.messages if m["type"] == "audio_stream_started"]
    assert started == ids


async def test_late_joiner_gets_the_offset_of_the_moment_it_joined(server, connect):
    """A listener joining mid-request is told the chunk playing now and its offset at the moment the
    server answered: between the listener's clock when it asked and when the answer came (a busy
    machine may take tens of ms in between; the offset must still fall inside, to the millisecond)."""
    first = await connect()
    await first.next("snapshot")
    await server.say("A long opening sentence that keeps talking for quite a while, on and on and on. Then more.")
    chunk = await first.next("audio_chunk_ready")
    await asyncio.sleep(max(0, chunk["starts_at_ms"] - time.time() * 1000) / 1000 + 0.3)
    asked_ms = time.time() * 1000
    late = await connect()
    snapshot = await late.next("snapshot")
    arrived_ms = time.time() * 1000
    position = snapshot["now_playing"]["position"]
    assert position["chunk_id"] == chunk["chunk_id"]
    joined_ms = chunk["starts_at_ms"] + position["offset_ms"]  # the moment the offset was taken at
    assert asked_ms - 1 <= joined_ms <= arrived_ms + 1, (asked_ms, joined_ms, arrived_ms)
    assert position["offset_ms"] >= 250


@pytest.mark.server_config({"timeline": {"lead_ms": 900, "min_lead_ms": 900, "request_gap_ms": 300}})
async def test_a_listener_joining_while_the_next_request_is_in_its_lead_gets_its_first_chunk(server, connect):
    """With a lead longer than the gap between requests, the next request's first chunk is announced
    while the one before still sounds. A listener joining then was not there to hear it: its snapshot
    carries it in the request's queue item, so it does not miss that sentence."""
    observer = await connect()
    await observer.next("snapshot")
    first = await (await server.say("The first request goes on for a while, long enough to be sounding still.")).json()
    second = await (await server.say("The second one.")).json()
    chunk = await observer.next("audio_chunk_ready", where=lambda m: m["request_id"] == second["request_id"])
    late = await connect()
    snapshot = await late.next("snapshot")
    assert snapshot["now_playing"]["request_id"] == first["request_id"], "joined after the window"
    item = next(i for i in snapshot["queue"] if i["request_id"] == second["request_id"])
    assert [c["chunk_id"] for c in item["chunks"]] == [chunk["chunk_id"]]
    assert item["chunks"][0]["starts_at_ms"] == chunk["starts_at_ms"]


@pytest.mark.server_config({"tts": {"tone_fail_marker": "[explode]"}})
async def test_tts_failure_fails_the_request_and_the_next_one_starts(server, connect):
    """A sentence the engine cannot speak fails its request; listeners are told and the queue moves on."""
    listener = await connect()
    await listener.next("snapshot")
    bad = await (await server.say("This is fine. This will [explode] now.")).json()
    good = await (await server.say("The next request still plays.")).json()
    failed = await listener.next("request_failed")
    assert failed["request_id"] == bad["request_id"]
    assert "explode" in failed["reason"]
    started = await listener.next("audio_stream_started", where=lambda m: m["request_id"] == good["request_id"])
    assert started["starts_at_ms"] > 0
    await listener.next("request_played", where=lambda m: m["request_id"] == good["request_id"])


@pytest.mark.server_config({"tts": {"tone_stall_marker": "[stall]"}, "timeline": {"generation_timeout_s": 1}})
async def test_generation_stall_times_out_and_the_next_request_starts(server, connect):
    """A request whose synthesis never finishes fails after the generation timeout and the next one plays."""
    listener = await connect()
    await listener.next("snapshot")
    stuck = await (await server.say("Hello. I will [stall] forever.")).json()
    after = await (await server.say("Meanwhile, life goes on.")).json()
    failed = await listener.next("request_failed", timeout=5)
    assert failed["request_id"] == stuck["request_id"]
    assert "timed out" in failed["reason"]
    await listener.next("request_played", where=lambda m: m["request_id"] == after["request_id"])
    status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert state["queue"] == [] and state["now_playing"] is None


async def test_acks_are_recorded_per_connection(server, connect):
    """Each connection's audio_played acknowledgements are stored against that connection, once each."""
    alice, bob = await connect(), await connect()
    a_id = (await alice.next("snapshot"))["connection_id"]
    b_id = (await bob.next("snapshot"))["connection_id"]
    await server.say("One. Two.")
    first = await alice.next("audio_chunk_ready")
    second = await alice.next("audio_chunk_ready")
    await alice.send({"type": "audio_played", "chunk_id": first["chunk_id"]})
    await alice.send({"type": "audio_played", "chunk_id": second["chunk_id"]})
    await alice.send({"type": "audio_played", "chunk_id": second["chunk_id"]})
    await bob.send({"type": "audio_played", "chunk_id": second["chunk_id"]})
    replies = [await alice.next("ack_recorded") for _ in range(3)]
    await bob.next("ack_recorded")
    assert [r["duplicate"] for r in replies] == [False, False, True]
    store = server.station.store
    assert [c for c, _ in await store.acks(a_id)] == [first["chunk_id"], second["chunk_id"]]
    assert [c for c, _ in await store.acks(b_id)] == [second["chunk_id"]]


async def test_http_ack_records_a_delivery(server, connect):
    """POST /api/audio/played records an acknowledgement, tied to a connection when one is named."""
    listener = await connect()
    conn = (await listener.next("snapshot"))["connection_id"]
    await server.say("Acknowledge me.")
    chunk = await listener.next("audio_chunk_ready")
    async with aiohttp.ClientSession() as http:
        url = f"{server.base_url}/api/audio/played/{chunk['chunk_id']}"
        async with http.post(url, params={"connection_id": conn}) as resp:
            assert resp.status == 200 and (await resp.json())["recorded"] is True
        async with http.post(url, params={"connection_id": conn}) as resp:
            assert (await resp.json())["recorded"] is False
    assert [c for c, _ in await server.station.store.acks(conn)] == [chunk["chunk_id"]]


@pytest.mark.server_config({"tts": {"tone_delay_ms": 400}})
async def test_progressive_stream_delivers_first_chunk_before_last_is_synthesized(server):
    """The request's stream yields its first audio while later sentences are still being synthesized."""
    body = await (await server.say("One sentence. Two sentences. Three sentences. Four sentences.")).json()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/api/audio/stream/{body['request_id']}") as resp:
            assert resp.headers["Content-Type"] == "audio/mpeg"
            first = await resp.content.readany()
            assert first
            _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
            progress = state["now_playing"]
            assert len(progress["chunks"]) < progress["chunks_total"]
            rest = await resp.read()
    assert len(first) + len(rest) > 4 * 1000


async def test_stream_with_offset_skips_into_the_request(server, connect):
    """?offset_ms=N starts the stream N ms into the request's audio, to the sample."""
    listener = await connect()
    await listener.next("snapshot")
    body = await (await server.say("A first sentence of some length. A second sentence of some length.")).json()
    await listener.next("request_played")
    async with aiohttp.ClientSession() as http:
        url = f"{server.base_url}/api/audio/stream/{body['request_id']}"
        async with http.get(url) as resp:
            whole = decode_mp3(await resp.read())
        async with http.get(url, params={"offset_ms": "200"}) as resp:
            part = decode_mp3(await resp.read())
    # Both streams start with the same encoder delay, so the first sentence gap moves by exactly the offset.
    assert abs((first_gap(whole) - first_gap(part)) - 4410) <= 22  # 200 ms at 22050 Hz, within 1 ms
    chunks = played_chunks(listener.messages)
    content_ms = sum(c["duration_ms"] for c in chunks) + FAST_TONES["timeline"]["sentence_gap_ms"]
    assert abs(len(whole) / 22.05 - content_ms) < 80  # one encoder delay and padding at most


def first_gap(samples: np.ndarray) -> int:
    """Index where the first inter-sentence silence begins (after the first sound)."""
    loud = np.convolve(np.abs(samples.astype(float)), np.ones(32) / 32, "same") > 200
    start = int(np.argmax(loud))
    return start + int(np.argmax(~loud[start:]))


def decode_mp3(data: bytes) -> np.ndarray:
    out = subprocess.run(
        [
            ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            "pipe:0",
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            "22050",
            "pipe:1",
        ],
        input=data,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return np.frombuffer(out.stdout, dtype=np.int16)


@pytest.mark.server_config({"tts": {"tone_delay_ms": 700, "tone_ms_per_char": 5}})
async def test_underrun_slips_the_timeline_and_announces_it(server, connect):
    """When synthesis is slower than playback, later chunks slip (announced by timeline_shifted), never overlap."""
    listener = await connect()
    await listener.next("snapshot")
    await server.say("Short one. Short two. Short three.")
    shifted = await listener.next("timeline_shifted", timeout=15)
    assert shifted["shift_ms"] > 0
    await listener.next("request_played", timeout=15)
    chunks = played_chunks(listener.messages)
    for before, after in zip(chunks, chunks[1:]):
        assert after["starts_at_ms"] >= before["starts_at_ms"] + before["duration_ms"] + 120
    ready = {m["chunk_id"]: m for m in listener.messages if m["type"] == "audio_chunk_ready"}
    assert ready[shifted["chunk_id"]]["starts_at_ms"] == shifted["starts_at_ms"]


def ffmpeg_children() -> list[int]:
    """ffmpeg processes started by this (test and server) process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split()
        except OSError:
            continue
        if fields[1] == "(ffmpeg)" or "ffmpeg" in fields[1]:
            if int(fields[3]) == os.getpid():
                found.append(int(fields[0]))
    return found


@pytest.mark.server_config({"tts": {"tone_delay_ms": 300}})
async def test_stream_listener_leaving_frees_its_encoder(server):
    """A client that drops a progressive stream mid-request leaves no encoder or handler behind."""
    body = await (await server.say("One sentence. Two sentences. Three sentences. Four sentences.")).json()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/api/audio/stream/{body['request_id']}") as resp:
            assert await resp.content.readany()
    for _ in range(50):
        if not ffmpeg_children():
            break
        await asyncio.sleep(0.1)
    assert ffmpeg_children() == []


async def test_a_listener_that_asks_for_batches_hears_the_same_messages_in_fewer_sends(server):
    """`?batch=1` on the real server: a narration's steps of several messages arrive as batch
    messages, and unwrapped they are what a listener without batches hears, in the same order. A
    value it does not know is refused before the upgrade."""
    plain = await websockets.connect(server.ws_url())
    batched = await websockets.connect(server.ws_url() + "?batch=1")
    try:
        received: dict[str, list[dict]] = {"plain": [], "batched": []}
        batches = {"plain": 0, "batched": 0}

        async def until_played(ws, name: str) -> None:
            async with asyncio.timeout(20):
                while not any(m["type"] == "request_played" for m in received[name]):
                    message = json.loads(await ws.recv())
                    is_batch = message["type"] == "batch"
                    received[name].extend(message["messages"] if is_batch else [message])
                    batches[name] += is_batch

        for ws in (plain, batched):
            assert json.loads(await ws.recv())["type"] == "snapshot"
        assert (await server.say("One sentence here. And a second one.")).status == 202
        await asyncio.gather(until_played(plain, "plain"), until_played(batched, "batched"))
    finally:
        await plain.close()
        await batched.close()

    def story(messages: list[dict]) -> list[tuple]:
        """Up to the end of the narration; listener counts come whenever their timer says."""
        told = [(m["type"], m.get("chunk_id")) for m in messages if m["type"] != "listeners_changed"]
        return told[: told.index(("request_played", None)) + 1]

    assert story(received["batched"]) == story(received["plain"])
    assert "audio_stream_started" in [m["type"] for m in received["plain"]]
    assert batches["batched"] > 0, "a step of several messages came as separate sends"
    assert batches["plain"] == 0
    async with aiohttp.ClientSession() as http:
        async with http.get(server.ws_url().replace("ws", "http", 1) + "?batch=yes") as resp:
            assert resp.status == 400
            assert "batch" in (await resp.json())["error"]["message"]
