"""Pause and resume for everyone, through the real server: HTTP controls, WebSocket announcements,
snapshots, and a pause that survives a restart (a real process killed with SIGKILL)."""

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
import websockets
from server_process import ServerProcess, cli

NARRATION = "The rain falls on the tavern roof. The door creaks open. A stranger walks in and looks around."

pytestmark = pytest.mark.server_config({"tts": {"tone_ms_per_char": 30}})


async def control(base_url: str, channel: str, action: str, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url}/api/channels/{channel}/{action}", headers=headers) as resp:
            return resp.status, await resp.json()


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_pause_stops_the_timeline_for_everyone_and_resume_goes_on_from_there(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    request_id = (await (await server.say(NARRATION)).json())["request_id"]
    first = await listener.next("audio_chunk_ready")
    await asyncio.sleep(max(0, first["starts_at_ms"] + 200 - now_ms()) / 1000)  # 200 ms into the first sentence

    asked_ms = now_ms()
    status, body = await control(server.base_url, server.channel, "pause", server.token)
    assert status == 200 and body["paused"] is True
    paused = await listener.next("channel_paused")
    paused_at = paused["paused_at_ms"]
    assert paused_at == body["paused_at_ms"] and paused_at >= asked_ms + 300  # a lead ahead: all stop together
    assert (await control(server.base_url, server.channel, "pause", server.token))[0] == 409

    await asyncio.sleep(max(0, paused_at - now_ms()) / 1000 + 1.5)  # longer than the whole narration
    status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert state["paused_at_ms"] == paused_at
    assert state["now_playing"]["request_id"] == request_id  # it did not finish while paused
    position = state["now_playing"]["position"]
    late = await connect()  # a listener arriving while paused sees the pause and where it stands
    snapshot = await late.next("snapshot")
    assert snapshot["paused_at_ms"] == paused_at
    assert snapshot["now_playing"]["position"] == position
    assert not [m for m in listener.messages if m["type"] == "request_played"]

    status, body = await control(server.base_url, server.channel, "resume", server.token)
    assert status == 200 and body["paused"] is False
    resumed = await listener.next("channel_resumed")
    assert resumed["paused_at_ms"] == paused_at
    assert resumed["shift_ms"] == resumed["resumes_at_ms"] - paused_at > 1500
    status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    cut = next(c for c in state["now_playing"]["chunks"] if c["starts_at_ms"] < resumed["resumes_at_ms"])
    assert cut["chunk_id"] == position["chunk_id"]
    assert cut["from_ms"] == resumed["resumes_at_ms"]  # it goes on from the resume...
    assert resumed["resumes_at_ms"] - cut["starts_at_ms"] == position["offset_ms"]  # ...where it stopped
    assert (await control(server.base_url, server.channel, "resume", server.token))[0] == 409

    played = await listener.next("request_played", timeout=15, where=lambda m: m["request_id"] == request_id)
    assert played["ended_at_ms"] > resumed["resumes_at_ms"]


async def test_pause_needs_the_producer_token_and_a_known_channel(server):
    assert (await control(server.base_url, server.channel, "pause", None))[0] == 401
    assert (await control(server.base_url, server.channel, "pause", "not-the-token"))[0] in (401, 403)
    assert (await control(server.base_url, "nowhere", "pause", server.token))[0] == 404
    status, body = await control(server.base_url, server.channel, "resume", server.token)
    assert status == 409 and "not paused" in body["error"]["message"]
    status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert state["paused_at_ms"] is None  # nothing changed


async def test_a_pause_survives_a_restart(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text('[tts]\nengine = "tone"\ntone_ms_per_char = 30\n[timeline]\nlead_ms = 300\n')
    data_dir = tmp_path / "data"
    token = json.loads(cli("channel", "create", "table", "--json", data_dir=data_dir, config=config).stdout)[
        "producer_token"
    ]
    server = ServerProcess(data_dir, config)
    await server.start()
    try:
        ws_url = "ws" + server.base_url.removeprefix("http") + "/ws/channels/table"
        async with websockets.connect(ws_url) as ws:
            async with aiohttp.ClientSession() as http:
                await http.post(
                    f"{server.base_url}/api/channels/table/requests",
                    json={"text": NARRATION},
                    headers={"Authorization": f"Bearer {token}"},
                )
            while (message := json.loads(await ws.recv()))["type"] != "audio_chunk_ready":
                pass
        status, body = await control(server.base_url, "table", "pause", token)
        assert status == 200
        server.kill()
        await server.start()
        async with websockets.connect(ws_url) as ws:
            snapshot = json.loads(await ws.recv())
            assert snapshot["paused_at_ms"] == body["paused_at_ms"]
            assert snapshot["now_playing"]["chunks"][0]["chunk_id"] == message["chunk_id"]
            status, resumed = await control(server.base_url, "table", "resume", token)
            assert status == 200 and resumed["paused_at_ms"] == body["paused_at_ms"]
            while (message := json.loads(await ws.recv()))["type"] != "request_played":
                pass
    finally:
        server.kill()
