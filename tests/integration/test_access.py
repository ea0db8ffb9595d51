"""Access control against the real server: private channels, producer write limits, WebSocket
message limits and the per-address connection cap. Every refusal is clear and changes nothing."""

import asyncio
import json
import logging
import socket
import sys

import aiohttp
import pytest
import websockets
from conftest import Listener, start_server
from sqlalchemy import func, select, text

from broadcaster.runtime.accounts import create_channel, new_producer_token, set_listen_key
from db.models import DeliveryRow
from web.keys import ACCESS, METRICS


async def private_server(tmp_path, overrides=None):
    runner, server = await start_server(tmp_path, overrides)
    key = await set_listen_key(server.station.store, server.channel, private=True)
    return runner, server, key


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_of(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> tuple[int, str]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, (await resp.read()).decode("utf-8", "replace")


async def played_request(server, listener: Listener, text: str = "A secret scene.") -> dict:
    resp = await server.say(text)
    assert resp.status == 202
    return await listener.next("audio_chunk_ready", timeout=20)


async def test_private_channel_refuses_everything_without_its_key(tmp_path):
    """Page, queue, socket, chunk, stream, live stream and acks all need the key (or the producer token)."""
    runner, server, key = await private_server(tmp_path)
    try:
        base, ch = server.base_url, server.channel
        producer_ws = await websockets.connect(server.ws_url(), additional_headers=bearer(server.token))
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
            assert (
                await status_of(
                    http,
                    "GET",
                    f"{base}/api/channels/{ch}/audio/queue",
                    headers={"Authorization": f"Bearer {server.token}"},
                )
            )[0] == 200
            async with websockets.connect(server.ws_url() + f"?key={key}") as ws:
                assert json.loads(await ws.recv())["type"] == "snapshot"
        await producer_ws.close()
    finally:
        await runner.cleanup()


async def acks_for(server, chunk_id: str) -> int:
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
        sys.executable,
        "-m",
        "broadcaster.cli",
        "channel",
        "create",
        "secret",
        "--private",
        "--json",
        "--data-dir",
        str(data),
        stdout=asyncio.subprocess.PIPE,
    )
    made = json.loads((await proc.communicate())[0])
    assert made["listen_key"].startswith("lk_")
    assert made["listen_url"].endswith(f"/c/secret?key={made['listen_key']}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster.cli",
        "channel",
        "key",
        "secret",
        "--off",
        "--json",
        "--data-dir",
        str(data),
        stdout=asyncio.subprocess.PIPE,
    )
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
    assert server.app[METRICS].registry.get_sample_value("broadcaster_refused_total", {"reason": "producer_rate"}) == 2


@pytest.mark.server_config({"limits": {"producer_writes_per_minute": 60, "producer_write_burst": 1}})
async def test_refused_write_says_rate_limited_in_json(server):
    await server.say("First.")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/{server.channel}/queue/shuffle",
            json={},
            headers={"Authorization": f"Bearer {server.token}"},
        ) as resp:
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


@pytest.mark.server_config({"limits": {"connects_per_second": 1, "connect_burst": 3}})
async def test_connecting_again_and_again_from_one_address_gets_429_and_writes_no_row(server):
    """Each connection is a row kept as long as the cleanup keeps them: one client connecting and
    leaving in a loop wrote 460 a second. Past the burst, new sockets and streams wait their turn."""
    store = server.station.store
    for _ in range(3):
        async with websockets.connect(server.ws_url()) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(server.ws_url())
    assert refused.value.response.status_code == 429
    assert int(refused.value.response.headers["Retry-After"]) >= 1
    assert b"new connections a second from one address" in refused.value.response.body
    async with aiohttp.ClientSession() as http:
        status, body = await status_of(http, "GET", f"{server.base_url}/c/{server.channel}/live.mp3")
        assert status == 429 and "rate_limited" in body
    await store.connection_log.flush()
    async with store.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM listener_connections"))).scalar() == 3
    await asyncio.sleep(1.1)  # a token back
    async with websockets.connect(server.ws_url()) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"


# -- open connections and the credentials that admitted them --------------------------------------

RECHECK = {"limits": {"credential_recheck_s": 0.2}}
STALLING = {"tts": {"tone_stall_marker": "STALL"}}  # a sentence with it never finishes: its stream stays open


async def closed_with(ws: websockets.ClientConnection, within_s: float = 10) -> websockets.frames.Close:
    """Read (and drop) messages until the server closes the socket; its close frame."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(within_s):
            while True:
                await ws.recv()
    return closed.value.rcvd


async def read_to_end(resp: aiohttp.ClientResponse, within_s: float = 10) -> int:
    """Read an HTTP stream until the server ends it; how many bytes came."""
    size = 0
    async with asyncio.timeout(within_s):
        async for data in resp.content.iter_any():
            size += len(data)
    return size


async def open_console(server, token: str) -> Listener:
    """A console socket as the page opens it: ?role=console, then the token in the first message."""
    console = Listener(await websockets.connect(server.ws_url() + "?role=console"))
    await console.send({"type": "auth", "token": token})
    await console.next("snapshot")
    return console


async def test_a_new_listen_key_cuts_off_sockets_and_streams_opened_with_the_old_one(tmp_path):
    """The socket (4401), live.mp3 and a progressive stream opened with the old key end; the producer's socket stays."""
    runner, server, old_key = await private_server(tmp_path, {**RECHECK, **STALLING})
    try:
        base, ch = server.base_url, server.channel
        producer = Listener(await websockets.connect(server.ws_url(), additional_headers=bearer(server.token)))
        chunk = await played_request(server, producer, "Heard first. STALL never comes.")
        keyed = Listener(await websockets.connect(server.ws_url() + f"?key={old_key}"))
        await keyed.next("snapshot")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/c/{ch}/live.mp3?key={old_key}") as live,
            http.get(f"{base}/api/audio/stream/{chunk['request_id']}?key={old_key}") as stream,
        ):
            assert live.status == 200 and stream.status == 200
            new_key = await set_listen_key(server.station.store, ch, private=True)
            close = await closed_with(keyed.ws)
            assert close.code == 4401 and close.reason == "listen key no longer valid"
            await read_to_end(live)
            await read_to_end(stream)
        await producer.send({"type": "time_sync", "t0": 1})
        assert (await producer.next("time_sync"))["t0"] == 1  # admitted by the token, which still holds
        async with websockets.connect(server.ws_url() + f"?key={new_key}") as fresh:
            assert json.loads(await fresh.recv())["type"] == "snapshot"
        await producer.ws.close()
    finally:
        await runner.cleanup()


@pytest.mark.server_config(RECHECK)
async def test_making_a_public_channel_private_cuts_off_those_listening_without_a_key(server, connect):
    """A socket and a live.mp3 player that came in while the channel was public are closed once it is private."""
    listener = await connect()
    await listener.next("snapshot")
    async with aiohttp.ClientSession() as http, http.get(f"{server.base_url}/c/{server.channel}/live.mp3") as live:
        assert live.status == 200
        await set_listen_key(server.station.store, server.channel, private=True)
        close = await closed_with(listener.ws)
        assert close.code == 4401 and close.reason == "channel is private now: listen key required"
        await read_to_end(live)


@pytest.mark.server_config(RECHECK)
async def test_a_new_producer_token_closes_consoles_opened_with_the_old_one(server, connect):
    """Rotating the token closes the console socket with 4401; a listener of the public channel stays."""
    console = await open_console(server, server.token)
    listener = await connect()
    await listener.next("snapshot")
    await new_producer_token(server.station.store, server.channel)
    close = await closed_with(console.ws)
    assert close.code == 4401 and close.reason == "producer token no longer valid"
    await listener.send({"type": "time_sync", "t0": 7})
    assert (await listener.next("time_sync"))["t0"] == 7


@pytest.mark.server_config({"limits": {"ws_auth_timeout_s": 0.5}})
async def test_a_console_socket_gets_no_snapshot_without_the_producer_token(server):
    """?role=console: no auth message in time is 4408, a wrong token 4401 (after an error each); the token passes."""
    url = server.ws_url() + "?role=console"
    async with websockets.connect(url) as silent:
        error = json.loads(await silent.recv())
        assert error["type"] == "error" and error["code"] == "auth_timeout"
        assert (await closed_with(silent)).code == 4408
    async with websockets.connect(url) as wrong:
        await wrong.send(json.dumps({"type": "auth", "token": "bc_wrong"}))
        error = json.loads(await wrong.recv())
        assert error["type"] == "error" and error["code"] == "unauthorized" and "not valid" in error["message"]
        assert (await closed_with(wrong)).code == 4401
    async with websockets.connect(url) as early:
        await early.send(json.dumps({"type": "time_sync", "t0": 1}))
        error = json.loads(await early.recv())
        assert error["code"] == "bad_request" and "auth" in error["message"]
        assert (await closed_with(early)).code == 4401
    async with websockets.connect(url) as right:
        await right.send(json.dumps({"type": "auth", "token": server.token}))
        assert json.loads(await right.recv()) == {"type": "authenticated", "channel": server.channel}
        snapshot = json.loads(await right.recv())
        assert snapshot["type"] == "snapshot" and snapshot["listeners"] == 0  # a console is not counted
    async with websockets.connect(url, additional_headers=bearer(server.token)) as by_header:
        assert json.loads(await by_header.recv())["type"] == "snapshot"  # a client that can set headers
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, additional_headers=bearer("bc_wrong"))
    assert refused.value.response.status_code == 401


async def test_listener_routes_refuse_the_producer_token_in_the_url(tmp_path):
    """?token= no longer opens a private channel (it would sit in logs and histories); the Bearer header does."""
    runner, server, _ = await private_server(tmp_path)
    try:
        queue = f"{server.base_url}/api/channels/{server.channel}/audio/queue"
        async with aiohttp.ClientSession() as http:
            assert (await status_of(http, "GET", f"{queue}?token={server.token}"))[0] == 401
            assert (await status_of(http, "GET", queue, headers=bearer(server.token)))[0] == 200
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(server.ws_url() + f"?token={server.token}")
        assert refused.value.response.status_code == 401
    finally:
        await runner.cleanup()


async def test_audio_played_for_a_chunk_of_another_channel_is_refused_on_the_socket(server, connect):
    """The socket answers an error naming its own channel and records nothing."""
    other = await create_channel(server.station.store, "elsewhere")
    watcher = await connect("elsewhere")
    await watcher.next("snapshot")
    assert (await server.say("Elsewhere.", token=other.token, channel="elsewhere")).status == 202
    chunk = await watcher.next("audio_chunk_ready", timeout=20)
    listener = await connect()
    await listener.next("snapshot")
    await listener.send({"type": "audio_played", "chunk_id": chunk["chunk_id"]})
    async with asyncio.timeout(10):
        while (reply := json.loads(await listener.ws.recv()))["type"] not in ("error", "ack_recorded"):
            pass
    assert reply["type"] == "error" and reply["code"] == "wrong_channel"
    assert "'table'" in reply["message"] and "elsewhere" not in reply["message"]
    assert await acks_for(server, chunk["chunk_id"]) == 0


async def test_private_channel_audio_is_cacheable_only_by_the_listener(tmp_path):
    """A private channel's chunks are Cache-Control: private; a public channel's stay public and immutable."""
    runner, server, key = await private_server(tmp_path)
    try:
        public = await create_channel(server.station.store, "open")
        chunks = {}
        for name, token, query in ((server.channel, server.token, f"?key={key}"), ("open", public.token, "")):
            async with websockets.connect(server.ws_url(name) + query) as ws:
                chunks[name] = await played_request_on(server, Listener(ws), token, name)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base_url}{chunks[server.channel]['url']}?key={key}") as resp:
                assert resp.status == 200
                policy = resp.headers["Cache-Control"]
                assert policy.startswith("private") and "public" not in policy
            async with http.get(f"{server.base_url}{chunks['open']['url']}") as resp:
                assert resp.status == 200 and resp.headers["Cache-Control"] == "public, max-age=604800, immutable"
    finally:
        await runner.cleanup()


async def played_request_on(server, listener: Listener, token: str, channel: str) -> dict:
    await listener.next("snapshot")
    assert (await server.say("A line.", token=token, channel=channel)).status == 202
    return await listener.next("audio_chunk_ready", timeout=20)


LONG_TEXT = " ".join(f"Sentence number {i} goes on for a while, so the stream has much to send." for i in range(14))


@pytest.mark.server_config(
    {"limits": {"stream_write_timeout_s": 1}, "tts": {"tone_ms_per_char": 100, "mp3_bitrate_kbps": 160}}
)
async def test_a_progressive_stream_whose_client_reads_nothing_is_ended(server, connect):
    """A client that stops reading has its stream ended (and its encoder stopped) after the write timeout."""
    listener = await connect()
    chunk = await played_request(server, listener, LONG_TEXT)  # ~100 s of audio: megabytes of MP3
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills at once
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    host, port = server.base_url.removeprefix("http://").split(":")
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(
        sock, f"GET /api/audio/stream/{chunk['request_id']} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    )
    try:
        async with asyncio.timeout(15):
            while open_connections(server) < 2:  # the listener's socket, and now the stream
                await asyncio.sleep(0.05)
            while open_connections(server) > 1:  # the stream ends although nothing was read
                await asyncio.sleep(0.1)
        assert server.app[ACCESS].encoders == 0
    finally:
        sock.close()


def open_connections(server) -> int:
    return sum(server.app[ACCESS].open.values())


async def third_stream_refused(server, connect, status: int, code: str) -> None:
    """Two progressive streams of a request that never finishes, held open; a third from the same
    address gets `status`, Retry-After and the error `code`, whose message names the cap of 2."""
    listener = await connect()
    chunk = await played_request(server, listener, "Heard first. STALL never comes.")
    url = f"{server.base_url}/api/audio/stream/{chunk['request_id']}"
    async with aiohttp.ClientSession() as http:
        first, second = await http.get(url), await http.get(url)
        try:
            assert first.status == 200 and second.status == 200
            async with http.get(url) as third:
                assert third.status == status and int(third.headers["Retry-After"]) > 0
                error = (await third.json())["error"]
                assert error["code"] == code and "2 progressive streams" in error["message"]
            assert server.app[ACCESS].encoders == 2
        finally:
            first.close()
            second.close()


@pytest.mark.server_config({"limits": {"max_stream_encoders": 2}, **STALLING})
async def test_progressive_streams_beyond_the_server_cap_get_503(server, connect):
    """With the cap reached, one more stream is refused with 503, Retry-After and a JSON error that says so."""
    await third_stream_refused(server, connect, 503, "too_many_streams")
    async with asyncio.timeout(3):  # the slots come back as soon as those clients leave
        while server.app[ACCESS].encoders:
            await asyncio.sleep(0.05)


@pytest.mark.server_config({"limits": {"max_stream_encoders": 4, "max_stream_encoders_per_address": 2}, **STALLING})
async def test_one_address_gets_only_its_share_of_the_stream_encoders(server, connect):
    """Slow readers from one address cannot hold every encoder: past its share it gets 429, and the
    server's encoders stay free for others."""
    await third_stream_refused(server, connect, 429, "too_many_connections")


async def test_a_body_left_unread_that_does_not_decompress_is_one_warning_line(server, caplog):
    """A request answered before its body is read (here a 405) whose Content-Encoding lies: aiohttp
    drains the body afterwards and fails; that is one warning, not an error with three tracebacks."""
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b"garbage, not gzip"
    writer.write(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n")
    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    async with asyncio.timeout(5):
        assert (await reader.readline()).startswith(b"HTTP/1.1 405")
        await reader.read()  # the server closes the connection
    writer.close()
    await asyncio.sleep(0.2)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelno for r in records] == [logging.WARNING], [r.getMessage()[:200] for r in records]
    assert records[0].exc_info is None and "\n" not in records[0].getMessage()


async def test_malformed_requests_are_logged_as_one_warning_line(server, caplog):
    """Garbage, a bad request line or a bad header: one warning naming the client, no error, no traceback."""
    host, port = server.base_url.removeprefix("http://").split(":")
    payloads = [
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ]
    for payload in payloads:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(payload)
        assert (await reader.read()).startswith(b"HTTP/1.")  # answered with a 400, then closed
        writer.close()
        await writer.wait_closed()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelno for r in records] == [logging.WARNING] * 3, [r.getMessage()[:200] for r in records]
    for record in records:
        line = record.getMessage()
        assert record.exc_info is None and "\n" not in line
        assert line.startswith("malformed HTTP request from 127.0.0.1: ")
