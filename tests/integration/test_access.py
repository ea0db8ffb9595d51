"""Access control against the real server: private channels, producer write limits, WebSocket
message limits and the per-address connection cap. Every refusal is clear and changes nothing."""

import asyncio
import json
import sys

import aiohttp
import pytest
import websockets
from sqlalchemy import func, select

from broadcaster.runtime.accounts import set_listen_key

from db.models import DeliveryRow
from web.keys import METRICS

from conftest import Listener, start_server


async def private_server(tmp_path, overrides=None):  # noqa: ANN001, ANN201
    runner, server = await start_server(tmp_path, overrides)
    key = await set_listen_key(server.station.store, server.channel, private=True)
    return runner, server, key


async def status_of(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> tuple[int, str]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, (await resp.read()).decode("utf-8", "replace")


async def played_request(server, listener: Listener, text: str = "A secret scene.") -> dict:  # noqa: ANN001
    resp = await server.say(text)
    assert resp.status == 202
    return await listener.next("audio_chunk_ready", timeout=20)


async def test_private_channel_refuses_everything_without_its_key(tmp_path):
    """Page, queue, socket, chunk, stream, live stream and acks all need the key (or the producer token)."""
    runner, server, key = await private_server(tmp_path)
    try:
        base, ch = server.base_url, server.channel
        producer_ws = await websockets.connect(server.ws_url() + f"?token={server.token}")
        chunk = await played_request(server, Listener(producer_ws))
        chunk_url = f"{base}{chunk['url']}"
        guarded = [
            ("GET", f"{base}/c/{ch}"),
            ("GET", f"{base}/api/channels/{ch}/audio/queue"),
            ("GET", f"{chunk_url}?format=flac"),
            ("GET", f"{base}/api/audio/stream/{chunk['request_id']}"),
            ("GET", f"{base}/c/{ch}/live.mp3"),
            ("POST", f"{base}/api/audio/played/{chunk['chunk_id']}"),
        ]
        async with aiohttp.ClientSession() as http:
            for method, url in guarded:
                for query in ("", "?key=lk_wrong"):
                    sep = "&" if "?" in url and query else ""
                    status, body = await status_of(http, method, url + (query.replace("?", sep) if sep else query))
                    assert status == 401, (url, query, body[:200])
                    assert "listen key" in body
            status, page = await status_of(http, "GET", f"{base}/c/{ch}")
            assert "<h1>" in page and "private channel" in page  # a person gets a page, not JSON
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(server.ws_url())
            assert refused.value.response.status_code == 401
            assert await acks_for(server, chunk["chunk_id"]) == 0  # the refused ack recorded nothing

            assert (await status_of(http, "GET", f"{base}/c/{ch}?key={key}"))[0] == 200
            assert (await status_of(http, "GET", f"{chunk_url}?format=flac&key={key}"))[0] == 200
            assert (await status_of(http, "GET", f"{chunk_url}", headers={"X-Listen-Key": key}))[0] == 200
            assert (await status_of(http, "GET", f"{base}/api/channels/{ch}/audio/queue",
                                    headers={"Authorization": f"Bearer {server.token}"}))[0] == 200
            async with websockets.connect(server.ws_url() + f"?key={key}") as ws:
                assert json.loads(await ws.recv())["type"] == "snapshot"
        await producer_ws.close()
    finally:
        await runner.cleanup()


async def acks_for(server, chunk_id: str) -> int:  # noqa: ANN001
    await server.station.store.ack_log.flush()
    async with server.station.store.session() as s:
        query = select(func.count()).select_from(DeliveryRow).where(DeliveryRow.chunk_id == chunk_id)
        return (await s.execute(query)).scalar_one()


async def test_a_new_listen_key_replaces_the_old_one_and_off_makes_the_channel_public(tmp_path):
    runner, server, old_key = await private_server(tmp_path)
    try:
        queue = f"{server.base_url}/api/channels/{server.channel}/audio/queue"
        async with aiohttp.ClientSession() as http:
            assert (await status_of(http, "GET", f"{queue}?key={old_key}"))[0] == 200
            new_key = await set_listen_key(server.station.store, server.channel, private=True)
            await wait_for_status(http, f"{queue}?key={old_key}", 401)  # the key digest is cached briefly
            assert (await status_of(http, "GET", f"{queue}?key={new_key}"))[0] == 200
            await set_listen_key(server.station.store, server.channel, private=False)
            await wait_for_status(http, queue, 200)
    finally:
        await runner.cleanup()


async def wait_for_status(http: aiohttp.ClientSession, url: str, status: int, within_s: float = 10) -> None:
    async with asyncio.timeout(within_s):
        while (await status_of(http, "GET", url))[0] != status:
            await asyncio.sleep(0.2)


async def test_cli_creates_a_private_channel_with_a_key_in_its_link(tmp_path):
    data = tmp_path / "cli-data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster.cli", "channel", "create", "secret", "--private", "--json",
        "--data-dir", str(data), stdout=asyncio.subprocess.PIPE)
    made = json.loads((await proc.communicate())[0])
    assert made["listen_key"].startswith("lk_")
    assert made["listen_url"].endswith(f"/c/secret?key={made['listen_key']}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broadcaster.cli", "channel", "key", "secret", "--off", "--json",
        "--data-dir", str(data), stdout=asyncio.subprocess.PIPE)
    public = json.loads((await proc.communicate())[0])
    assert public["listen_key"] is None and public["listen_url"].endswith("/c/secret")


@pytest.mark.server_config({"limits": {"producer_writes_per_minute": 6, "producer_write_burst": 3}})
async def test_producer_writes_beyond_the_rate_get_429_and_change_nothing(server):
    for i in range(3):
        assert (await server.say(f"Line {i}.")).status == 202
    refused = await server.say("One too many.")
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 10  # 6 a minute: a token every 10 s
    wrong_token = await server.say("Guessing.", token="bc_guess")
    assert wrong_token.status == 429  # guesses count too, so tokens cannot be brute-forced fast
    status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    texts = [r["text"] for r in state["queue"]] + ([state["now_playing"]["text"]] if state["now_playing"] else [])
    assert "One too many." not in texts and len(texts) == 3
    assert server.app[METRICS].refused.labels(reason="producer_rate").value == 2  # broadcaster_refused_total


@pytest.mark.server_config({"limits": {"producer_writes_per_minute": 60, "producer_write_burst": 1}})
async def test_refused_write_says_rate_limited_in_json(server):
    await server.say("First.")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/api/channels/{server.channel}/queue/shuffle", json={},
                             headers={"Authorization": f"Bearer {server.token}"}) as resp:
            body = await resp.json()
    assert resp.status == 429 and body["error"]["code"] == "rate_limited"
    assert "producer writes a minute" in body["error"]["message"]


@pytest.mark.server_config({"limits": {"ws_messages_per_second": 1, "ws_message_burst": 3}})
async def test_websocket_messages_beyond_the_rate_are_refused_then_the_flooder_is_closed(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    for i in range(5):
        await listener.send({"type": "time_sync", "t0": i})
    replies = [json.loads(await listener.ws.recv()) for _ in range(5)]
    kinds = [m["type"] for m in replies if m["type"] != "listeners_changed"]
    assert kinds.count("time_sync") == 3
    errors = [m for m in replies if m["type"] == "error"]
    assert errors and all(e["code"] == "rate_limited" and e["retry_after_ms"] > 0 for e in errors)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for i in range(50):
            await listener.send({"type": "time_sync", "t0": i})
        async with asyncio.timeout(10):
            while True:
                await listener.ws.recv()
    assert closed.value.rcvd.code == 4029
    healthy = await connect()  # the server and the channel carry on
    assert (await healthy.next("snapshot"))["type"] == "snapshot"


@pytest.mark.server_config({"limits": {"max_connections_per_address": 2}})
async def test_connections_beyond_the_per_address_cap_get_429(server, connect):
    first, second = await connect(), await connect()
    await first.next("snapshot")
    await second.next("snapshot")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(server.ws_url())
    assert refused.value.response.status_code == 429
    assert int(refused.value.response.headers["Retry-After"]) > 0
    async with aiohttp.ClientSession() as http:
        status, body = await status_of(http, "GET", f"{server.base_url}/c/{server.channel}/live.mp3")
        assert status == 429 and "too_many_connections" in body
        await second.ws.close()
        async with asyncio.timeout(10):  # the slot is freed once the server sees the close
            while True:
                try:
                    third = await websockets.connect(server.ws_url())
                    break
                except websockets.InvalidStatus:
                    await asyncio.sleep(0.1)
        assert json.loads(await third.recv())["type"] == "snapshot"
        await third.close()
