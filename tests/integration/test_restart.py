"""Kill -9 mid-request and restart: the timeline and the queue survive."""

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
import websockets
from server_process import ServerProcess, cli

CONFIG = """
[tts]
engine = "tone"
tone_ms_per_char = 40
tone_delay_ms = 250

[timeline]
lead_ms = 300
sentence_gap_ms = 100
request_gap_ms = 200
"""


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    return tmp_path / "data", config


async def table_and_server(data_dir: Path, config: Path) -> tuple[str, ServerProcess]:
    """The channel "table" made with the CLI, and a server started on it: its producer token and the server."""
    made = cli("channel", "create", "table", "--json", data_dir=data_dir, config=config)
    server = ServerProcess(data_dir, config)
    await server.start()
    return json.loads(made.stdout)["producer_token"], server


async def post(base_url: str, token: str, text: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url}/api/channels/table/requests", json={"text": text}, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 202
            return (await resp.json())["request_id"]


async def queue(base_url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/api/channels/table/audio/queue") as resp:
            return await resp.json()


async def test_kill_and_restart_mid_request_keeps_timeline_and_queue(paths):
    """SIGKILL while a request is on the air and generating: after restart its chunk times are unchanged,
    generation resumes, the pending requests are still queued, and everything plays in order."""
    data_dir, config = paths
    token, server = await table_and_server(data_dir, config)
    try:
        ws_url = "ws" + server.base_url.removeprefix("http") + "/ws/channels/table"
        announced: dict[str, int] = {}
        async with websockets.connect(ws_url) as ws:
            first = await post(
                server.base_url,
                token,
                "Sentence one is here. Sentence two is here. "
                "Sentence three is here. Sentence four is here. Sentence five is here.",
            )
            later = [await post(server.base_url, token, text) for text in ("Second request.", "Third request.")]
            while len(announced) < 2:
                message = json.loads(await ws.recv())
                if message["type"] == "audio_chunk_ready":
                    announced[message["chunk_id"]] = message["starts_at_ms"]
        server.kill()
        await server.start()
        state = await queue(server.base_url)
        assert state["now_playing"]["request_id"] == first
        kept = {c["chunk_id"]: c["starts_at_ms"] for c in state["now_playing"]["chunks"]}
        assert {cid: kept.get(cid) for cid in announced} == announced
        assert [item["request_id"] for item in state["queue"]] == later
        async with websockets.connect(ws_url) as ws:
            finished = []
            async with asyncio.timeout(30):
                while len(finished) < 3:
                    message = json.loads(await ws.recv())
                    if message["type"] in ("request_played", "request_failed"):
                        finished.append((message["type"], message["request_id"]))
        assert finished == [("request_played", rid) for rid in [first, *later]]
    finally:
        server.stop()


async def test_channel_created_by_cli_is_usable_at_once(paths):
    """A channel the CLI creates while the server runs accepts narration immediately."""
    data_dir, config = paths
    cli("channel", "create", "table", "--json", data_dir=data_dir, config=config)
    server = ServerProcess(data_dir, config)
    await server.start()
    try:
        made = json.loads(cli("channel", "create", "late-night", "--json", data_dir=data_dir, config=config).stdout)
        assert made["listen_url"].endswith("/c/late-night")
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{server.base_url}/api/channels/late-night/requests",
                json={"text": "Hi."},
                headers={"Authorization": f"Bearer {made['producer_token']}"},
            ) as resp:
                assert resp.status == 202
    finally:
        server.stop()


async def test_new_token_from_the_cli_replaces_the_old_one_at_once(paths):
    """`broadcaster channel token` issues a new producer token; the running server refuses the old one."""
    data_dir, config = paths
    old, server = await table_and_server(data_dir, config)
    try:
        assert await post_status(server.base_url, old) == 202
        new = json.loads(cli("channel", "token", "table", "--json", data_dir=data_dir, config=config).stdout)[
            "producer_token"
        ]
        assert new != old
        assert await post_status(server.base_url, old) == 401
        assert await post_status(server.base_url, new) == 202
    finally:
        server.stop()


async def post_status(base_url: str, token: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url}/api/channels/table/requests",
            json={"text": "Hello."},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            return resp.status


async def test_the_queue_keeps_the_order_a_producer_gave_it_across_a_restart(paths):
    """Requests moved in the queue (or put before the auto-DJ's, or 'up next' before its track) come back
    in that order after a kill and restart; they came back in the order they were submitted."""
    data_dir, config = paths
    token, server = await table_and_server(data_dir, config)
    try:
        first = await post(server.base_url, token, "Sentence one is here. " * 12)  # on the air throughout
        waiting = [await post(server.base_url, token, f"Request number {n}.") for n in range(4)]
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            url = f"{server.base_url}/api/channels/table/requests/{waiting[3]}/move"
            async with http.post(url, json={"position": 1}) as resp:  # before all the others that wait
                assert resp.status == 200, await resp.text()
        moved = [waiting[3], *waiting[:3]]
        assert [item["request_id"] for item in (await queue(server.base_url))["queue"]] == moved
        server.kill()
        await server.start()
        state = await queue(server.base_url)
        assert state["now_playing"]["request_id"] == first
        assert [item["request_id"] for item in state["queue"]] == moved
    finally:
        server.stop()


async def test_the_recent_history_survives_a_restart(paths):
    """The console's "recent" (what played, failed or was cancelled) comes back after a kill and
    restart, as it was; it came back empty."""
    data_dir, config = paths
    token, server = await table_and_server(data_dir, config)
    try:
        done = [await post(server.base_url, token, f"Short number {n}.") for n in range(3)]
        async with asyncio.timeout(30):
            while len((before := await queue(server.base_url))["recent"]) < len(done):
                await asyncio.sleep(0.1)
        server.kill()
        await server.start()
        after = await queue(server.base_url)
        assert [r["request_id"] for r in after["recent"]] == [r["request_id"] for r in before["recent"]]
        assert after["recent"] == before["recent"]
    finally:
        server.stop()
