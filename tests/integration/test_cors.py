"""Cross-origin access: public channels can be embedded by pages on other origins; private channels,
producer routes and the WebSocket of a private channel stay same-origin."""

import aiohttp
import pytest
import websockets

from broadcaster.runtime.accounts import create_channel

VTT = "https://vtt.example"
EXPOSED = {"content-range", "accept-ranges", "content-length", "icy-metaint", "icy-name"}


async def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers or {}) as resp:
        if method != "OPTIONS" and resp.content_type.startswith("audio/") and resp.status == 200:
            await resp.content.readexactly(1000)  # live.mp3 never ends: read a little and leave
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}


async def preflight(url: str, method: str = "GET", headers: str = "range", origin: str = VTT) -> tuple[int, dict]:
    return await get(
        url,
        {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
        "OPTIONS",
    )


def exposed(headers: dict[str, str]) -> set[str]:
    return {h.strip().lower() for h in headers.get("access-control-expose-headers", "").split(",") if h.strip()}


async def first_chunk(server, connect, channel: str | None = None, token: str | None = None) -> dict:
    listener = await connect(channel)
    await listener.next("snapshot")
    resp = await server.say("A sentence for other origins.", token, channel)
    assert resp.status == 202
    return await listener.next("audio_chunk_ready")


async def test_public_reads_carry_allow_origin_and_expose_player_headers(server, connect):
    """A public channel's queue, chunk audio, progressive stream and live.mp3 answer a foreign Origin with
    Access-Control-Allow-Origin and expose Content-Range, Accept-Ranges, Content-Length and icy-* headers."""
    chunk = await first_chunk(server, connect)
    base = server.base_url
    for path in (
        f"/api/channels/{server.channel}/audio/queue",
        chunk["url"],
        f"/c/{server.channel}/live.mp3",
        f"/api/audio/stream/{chunk['request_id']}",
    ):
        status, headers = await get(base + path, {"Origin": VTT, "Range": "bytes=0-99"})
        assert status in (200, 206), path
        assert headers.get("access-control-allow-origin") == "*", path
        assert EXPOSED <= exposed(headers), path


async def test_preflight_on_a_public_read_is_204_with_methods_range_and_max_age(server, connect):
    """OPTIONS on a public read route answers 204: methods GET and HEAD, the Range header, and a max-age."""
    chunk = await first_chunk(server, connect)
    for path in (
        f"/api/channels/{server.channel}/audio/queue",
        chunk["url"],
        f"/c/{server.channel}/live.mp3",
        f"/api/audio/stream/{chunk['request_id']}",
    ):
        status, headers = await preflight(server.base_url + path)
        assert status == 204, path
        assert headers["access-control-allow-origin"] == "*"
        assert {m.strip() for m in headers["access-control-allow-methods"].split(",")} == {"GET", "HEAD"}
        assert headers["access-control-allow-headers"].lower() == "range, icy-metadata"
        assert int(headers["access-control-max-age"]) > 0


async def test_played_acknowledgement_is_readable_cross_origin(server, connect):
    """POST /api/audio/played/{id} (a simple request, no preflight) answers a foreign Origin with allow-origin."""
    chunk = await first_chunk(server, connect)
    status, headers = await get(f"{server.base_url}/api/audio/played/{chunk['chunk_id']}", {"Origin": VTT}, "POST")
    assert status == 200 and headers["access-control-allow-origin"] == "*"


@pytest.mark.server_config({"server": {"cors_origins": [VTT]}})
async def test_listed_origins_are_echoed_with_vary_and_others_get_nothing(server):
    """With a list of origins, a listed one is echoed back with `Vary: Origin`; any other gets no CORS headers."""
    url = f"{server.base_url}/api/channels/{server.channel}/audio/queue"
    status, headers = await get(url, {"Origin": VTT})
    assert status == 200 and headers["access-control-allow-origin"] == VTT and "origin" in headers["vary"].lower()
    status, headers = await get(url, {"Origin": "https://elsewhere.example"})
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers = await preflight(url, origin="https://elsewhere.example")
    assert status == 403 and "access-control-allow-origin" not in headers


async def test_private_channels_get_no_cors_headers(server, connect):
    """A private channel's reads, even with the right key, carry no CORS headers, and their preflights are refused."""
    made = await create_channel(server.station.store, "secret", private=True)
    key = {"X-Listen-Key": made.listen_key}
    for path in ("/api/channels/secret/audio/queue", "/c/secret/live.mp3"):
        status, headers = await get(server.base_url + path, {"Origin": VTT, **key})
        assert status == 200 and "access-control-allow-origin" not in headers, path
        status, headers = await preflight(server.base_url + path, headers="range, x-listen-key")
        assert status == 403 and "access-control-allow-origin" not in headers, path


async def test_producer_routes_stay_same_origin_but_work_with_a_token(server):
    """Producer routes answer no preflight and send no CORS headers; a non-browser client with the token still writes."""
    url = f"{server.base_url}/api/channels/{server.channel}/requests"
    status, headers = await preflight(url, "POST", "authorization, content-type")
    assert status >= 400 and "access-control-allow-origin" not in headers
    headers = {"Authorization": f"Bearer {server.token}", "Origin": VTT}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"text": "From a script."}, headers=headers) as resp,
    ):
        assert resp.status == 202 and "Access-Control-Allow-Origin" not in resp.headers


async def socket_status(url: str, origin: str | None) -> int:
    """101 if the WebSocket opens, else the HTTP status that refused it."""
    try:
        async with websockets.connect(url, origin=origin) as ws:
            await ws.recv()
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.server_config({"server": {"cors_origins": [VTT]}})
async def test_websocket_origin_check(server):
    """The listener socket of a public channel opens for a listed origin, the server's own origin or no Origin;
    a private channel's only for its own origin or no Origin; anything else is a 403 before the upgrade."""
    made = await create_channel(server.station.store, "secret", private=True)
    public, private = server.ws_url(), server.ws_url("secret") + f"?key={made.listen_key}"
    own = server.base_url
    assert [await socket_status(public, origin) for origin in (VTT, own, None, "https://elsewhere.example")] == [
        101,
        101,
        101,
        403,
    ]
    assert [await socket_status(private, origin) for origin in (own, None, VTT)] == [101, 101, 403]


async def test_refused_socket_origin_is_a_json_error(server):
    """A refused Origin gets a JSON body that says why, not a bare status."""
    made = await create_channel(server.station.store, "secret", private=True)
    upgrade = {
        "Origin": VTT,
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    url = f"{server.base_url}/ws/channels/secret?key={made.listen_key}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=upgrade) as resp:
        body = await resp.json()
    assert resp.status == 403 and body["error"]["code"] == "origin_not_allowed"
    assert "same origin" in body["error"]["message"]
