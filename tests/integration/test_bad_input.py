"""Bad input gets a clear error and changes nothing: HTTP answers 4xx JSON, the WebSocket answers and stays open."""

import io
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import websockets
from sqlalchemy import func, select
from websockets.exceptions import ConnectionClosed, InvalidStatus
from yarl import URL

from db.models import DeliveryRow

QUEUE = "/api/channels/table/audio/queue"
UNKNOWN_ID = "0123456789abcdef"
CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
}


# --- helpers ---------------------------------------------------------------------------------------------------


async def call(server, method: str, path: str, **kw: Any) -> tuple[int, Any, bytes]:
    """One HTTP request; `path` is sent exactly as written (no re-encoding). Returns (status, headers, body)."""
    async with aiohttp.ClientSession() as http:
        async with http.request(method, URL(server.base_url + path, encoded=True), **kw) as resp:
            return resp.status, resp.headers, await resp.read()


def assert_error(status: int, body: bytes, expected: int, mentions: str = "", code: str | None = None) -> dict:
    """The body is the JSON error shape with the expected 4xx status; returns the error object."""
    assert status == expected, body[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"}
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"].strip()
    if code or expected in CODES:
        assert error["code"] == (code or CODES[expected])
    assert mentions.lower() in error["message"].lower()
    return error


async def assert_queue_empty(server) -> None:
    status, state = await server.get_json(QUEUE)
    assert status == 200
    assert state["queue"] == [] and state["now_playing"] is None


async def deliveries(server) -> int:
    """How many playback acknowledgements the database holds (queued ones written first)."""
    await server.station.store.ack_log.flush()
    async with server.station.store.session() as s:
        return await s.scalar(select(func.count()).select_from(DeliveryRow))


async def open_socket(connect):
    listener = await connect()
    snapshot = await listener.next("snapshot")
    return listener, snapshot["connection_id"]


async def assert_usable(listener) -> None:
    """A time_sync round trip still works on this socket."""
    await listener.send({"type": "time_sync", "t0": 1})
    reply = await listener.next("time_sync", timeout=5)
    assert reply["t0"] == 1
    assert type(reply["t1"]) is int and type(reply["t2"]) is int and reply["t1"] <= reply["t2"]


async def ws_error(listener, frame: str | bytes) -> dict:
    """Send one raw frame; the reply is an error message; the socket still answers a time_sync afterwards."""
    await listener.ws.send(frame)
    error = await listener.next("error", timeout=5)
    assert set(error) == {"type", "code", "message"}
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"].strip()
    await assert_usable(listener)
    return error


async def real_chunk(server, connect) -> tuple[str, bytes]:
    """Submit text, wait for its first chunk to be announced, and fetch that chunk's bytes."""
    listener, _ = await open_socket(connect)
    assert (await server.say("Hello there, this sentence becomes a real chunk.")).status == 202
    chunk_id = (await listener.next("audio_chunk_ready"))["chunk_id"]
    status, _, data = await call(server, "GET", f"/api/audio/chunks/{chunk_id}")
    assert status == 200 and len(data) > 200
    return chunk_id, data


# --- POST /api/channels/{channel}/requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class BadPost:
    status: int
    data: bytes = b'{"text": "Hello there."}'
    auth: str | None = "Bearer {token}"
    content_type: str | None = "application/json"
    channel: str = "table"  # a raw, already percent-encoded path segment
    mentions: str = ""


def text(value: Any) -> bytes:
    return json.dumps({"text": value}).encode()


BAD_POSTS = {
    # where
    "unknown channel": BadPost(404, channel="nope", mentions="nope"),
    "unknown channel, no token": BadPost(404, channel="nope", auth=None),
    "encoded traversal": BadPost(404, channel="..%2f.."),
    "encoded dot-dot": BadPost(404, channel="%2e%2e"),
    "encoded backslash": BadPost(404, channel="..%5c..%5ctable"),
    "nul byte": BadPost(404, channel="%00"),
    "nul after name": BadPost(404, channel="table%00"),
    "newline after name": BadPost(404, channel="table%0A"),
    "space": BadPost(404, channel="ta%20ble"),
    "upper case": BadPost(404, channel="TABLE"),
    "emoji name": BadPost(404, channel="%F0%9F%93%BB"),
    "very long name": BadPost(404, channel="a" * 2000),
    # who
    "no authorization": BadPost(401, auth=None, mentions="bearer"),
    "wrong token": BadPost(401, auth="Bearer not-the-token", mentions="token"),
    "empty bearer": BadPost(401, auth="Bearer "),
    "basic scheme": BadPost(401, auth="Basic {token}"),
    "token scheme": BadPost(401, auth="Token {token}"),
    "bare token": BadPost(401, auth="{token}"),
    "token of another length": BadPost(401, auth="Bearer {token}x"),
    # what
    "text/plain": BadPost(415, content_type="text/plain", mentions="application/json"),
    "form encoded": BadPost(415, data=b"text=hello", content_type="application/x-www-form-urlencoded"),
    "no content type": BadPost(415, content_type=None),
    "truncated json": BadPost(400, data=b'{"text": "Hello', mentions="json"),
    "single quotes": BadPost(400, data=b"{'text': 'Hello'}", mentions="json"),
    "empty body": BadPost(400, data=b"", mentions="json"),
    "trailing garbage": BadPost(400, data=b'{"text": "Hello"} x', mentions="json"),
    "json array": BadPost(400, data=b'["Hello there."]', mentions="object"),
    "json string": BadPost(400, data=b'"Hello there."', mentions="object"),
    "json number": BadPost(400, data=b"42", mentions="object"),
    "json null": BadPost(400, data=b"null", mentions="object"),
    "json true": BadPost(400, data=b"true", mentions="object"),
    "missing text": BadPost(400, data=b"{}", mentions="text"),
    "misspelled text": BadPost(400, data=b'{"txt": "Hello there."}', mentions="text"),
    "text number": BadPost(400, data=text(42), mentions="string"),
    "text list": BadPost(400, data=text(["Hello there."]), mentions="string"),
    "text null": BadPost(400, data=text(None), mentions="string"),
    "text object": BadPost(400, data=text({"text": "Hello there."}), mentions="string"),
    "text bool": BadPost(400, data=text(True), mentions="string"),
    "empty text": BadPost(400, data=text(""), mentions="speak"),
    "whitespace text": BadPost(400, data=text(" \n\t \u00a0 \r\n "), mentions="speak"),
    "punctuation text": BadPost(400, data=text("... !?! -- ;:,"), mentions="speak"),
    "emoji text": BadPost(400, data=text("\U0001f600 \U0001f389 \U0001f4fb"), mentions="speak"),
    "control characters": BadPost(400, data=text("\x01\x02\x7f"), mentions="speak"),
    "text over limit": BadPost(400, data=text("Hello there. " * 384 + "x" * 9), mentions="5000"),
    "binary garbage": BadPost(400, data=b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8\xff"),
    "invalid utf-8": BadPost(400, data=b'{"text": "caf\xe9 au lait"}'),
    "utf-16 garbage": BadPost(400, data=b"\xff\xfe\x00\xd8\x00\xd8"),
    "utf-16 json": BadPost(400, data='{"text": "Hello there."}'.encode("utf-16"), mentions="json"),
    "utf-8 with a byte order mark": BadPost(400, data=b'\xef\xbb\xbf{"text": "Hello there."}', mentions="json"),
    "nul inside text": BadPost(400, data=text("Hello\x00 there."), mentions="nul"),
    "thousands of tiny sentences": BadPost(400, data=text("Ab. " * 1250), mentions="sentences"),
}
assert len(json.loads(BAD_POSTS["text over limit"].data)["text"]) == 5001


async def post_bad(server, case: BadPost) -> tuple[int, bytes]:
    headers = {}
    if case.auth is not None:
        headers["Authorization"] = case.auth.format(token=server.token)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    status, _, body = await call(
        server, "POST", f"/api/channels/{case.channel}/requests", data=case.data, headers=headers
    )
    return status, body


@pytest.mark.parametrize("case", BAD_POSTS.values(), ids=BAD_POSTS.keys())
async def test_bad_request_submission_is_refused_and_queues_nothing(server, case):
    """Each malformed submission gets its 4xx JSON error and leaves the queue empty."""
    status, body = await post_bad(server, case)
    assert_error(status, body, case.status, case.mentions)
    await assert_queue_empty(server)


async def test_body_over_the_size_limit_is_413_json(server):
    """A 2 MB body is refused with 413 and a JSON error, and nothing is queued."""
    body = b'{"text": "' + b"Hello there. " * 160_000 + b'"}'
    status, _, answer = await call(
        server,
        "POST",
        "/api/channels/table/requests",
        data=io.BytesIO(body),
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
    )
    assert_error(status, answer, 413)
    await assert_queue_empty(server)


async def test_after_every_bad_submission_the_queue_is_unchanged_and_a_good_one_is_accepted(server):
    """All the bad submissions in a row change nothing; then a good request still gets 202."""
    for case in BAD_POSTS.values():
        status, body = await post_bad(server, case)
        assert_error(status, body, case.status, case.mentions)
    await assert_queue_empty(server)
    resp = await server.say("Still on the air.")
    assert resp.status == 202
    status, state = await server.get_json(QUEUE)
    queued = ([state["now_playing"]] if state["now_playing"] else []) + state["queue"]
    assert [item["text"] for item in queued] == ["Still on the air."]


async def test_json_with_a_huge_number_is_400(server):
    """A JSON number too long for Python's int conversion is a 400, not a 500."""
    status, body = await post_bad(server, BadPost(400, data=b'{"text": 1' + b"0" * 5000 + b"}"))
    assert_error(status, body, 400, "json")
    await assert_queue_empty(server)


async def test_deeply_nested_json_is_400(server):
    """A deeply nested JSON body (small, but deeper than the parser's recursion limit) is a 400, not a 500."""
    status, body = await post_bad(server, BadPost(400, data=b'{"text": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"))
    assert_error(status, body, 400)
    await assert_queue_empty(server)


async def test_text_with_a_lone_surrogate_is_400(server):
    """Text with an unpaired UTF-16 surrogate escape (not encodable as UTF-8) is a 400, not a 500."""
    status, body = await post_bad(server, BadPost(400, data=b'{"text": "Hello \\ud800 there."}'))
    assert_error(status, body, 400, "text")
    await assert_queue_empty(server)


# --- GET queue, stream and chunks --------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["nope", "..%2f..", "%00", "TABLE", "a" * 2000])
async def test_queue_of_unknown_channel_is_404(server, channel):
    """GET /api/channels/{unknown}/audio/queue is a 404 JSON error."""
    status, _, body = await call(server, "GET", f"/api/channels/{channel}/audio/queue")
    assert_error(status, body, 404)


@pytest.mark.parametrize("request_id", [UNKNOWN_ID, "xyz", "0123456789ABCDEF", "0123456789abcdef0", "..%2f..", "%00"])
async def test_stream_of_bad_or_unknown_request_is_404(server, request_id):
    """GET /api/audio/stream/{id} with a malformed or unknown id is a 404 JSON error."""
    status, _, body = await call(server, "GET", f"/api/audio/stream/{request_id}")
    assert_error(status, body, 404)


@pytest.mark.parametrize("offset", ["-5", "abc", "1.5", "", "%EF%BC%91", "99999999999999999999999", "86400001"])
async def test_stream_with_bad_offset_is_400(server, offset):
    """?offset_ms that is negative, not a whole number or beyond a day is a 400 JSON error."""
    body = await (await server.say("Stream me.")).json()
    status, _, answer = await call(server, "GET", f"/api/audio/stream/{body['request_id']}?offset_ms={offset}")
    assert_error(status, answer, 400, "offset_ms")


@pytest.mark.parametrize(
    "chunk_id", [UNKNOWN_ID, "xyz", "0123456789ABCDEF", "..%2f..%2fbroadcaster.db", "%00", UNKNOWN_ID + "%0A"]
)
async def test_unknown_or_malformed_chunk_is_404(server, chunk_id):
    """GET /api/audio/chunks/{id} with an unknown or malformed id is a 404 JSON error."""
    status, _, body = await call(server, "GET", f"/api/audio/chunks/{chunk_id}")
    assert_error(status, body, 404)


@pytest.mark.parametrize("fmt", ["wav", "MP3", "", "mp3%00", "../mp3"])
async def test_chunk_in_unknown_format_is_400(server, connect, fmt):
    """?format= other than mp3 or flac is a 400 JSON error."""
    chunk_id, _ = await real_chunk(server, connect)
    status, _, body = await call(server, "GET", f"/api/audio/chunks/{chunk_id}?format={fmt}")
    assert_error(status, body, 400, "format")


async def test_chunk_range_first_100_bytes(server, connect):
    """Range bytes=0-99 is a 206 with exactly the first 100 bytes and a matching Content-Range."""
    chunk_id, data = await real_chunk(server, connect)
    status, headers, body = await call(server, "GET", f"/api/audio/chunks/{chunk_id}", headers={"Range": "bytes=0-99"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 0-99/{len(data)}"
    assert headers["Accept-Ranges"] == "bytes"
    assert body == data[:100]


async def test_chunk_range_suffix(server, connect):
    """Range bytes=-10 is a 206 with the last 10 bytes."""
    chunk_id, data = await real_chunk(server, connect)
    status, headers, body = await call(server, "GET", f"/api/audio/chunks/{chunk_id}", headers={"Range": "bytes=-10"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
    assert body == data[-10:]


@pytest.mark.parametrize("spec", ["{n}-", "{n}-{n}", "99999999-", "-0"])
async def test_chunk_range_beyond_the_end_is_416(server, connect, spec):
    """A range starting at or past the end (or selecting nothing) is a 416 with Content-Range bytes */len."""
    chunk_id, data = await real_chunk(server, connect)
    header = "bytes=" + spec.format(n=len(data))
    status, headers, body = await call(server, "GET", f"/api/audio/chunks/{chunk_id}", headers={"Range": header})
    assert_error(status, body, 416)
    assert headers["Content-Range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize(
    "header",
    ["bytes=abc", "bytes=5-2", "bytes=", "bytes=-", "bytes=1-2-3", "bytes 0-99", "=0-99", "bytes=0-" + "9" * 300],
)
async def test_malformed_range_is_400(server, connect, header):
    """A malformed Range header is a 400 JSON error (see web/ranges.py)."""
    chunk_id, _ = await real_chunk(server, connect)
    status, _, body = await call(server, "GET", f"/api/audio/chunks/{chunk_id}", headers={"Range": header})
    assert_error(status, body, 400, code="malformed_range")


@pytest.mark.parametrize("header", ["pages=1-2", "bytes=0-1,5-6"])
async def test_ignorable_range_serves_the_whole_chunk(server, connect, header):
    """A Range in an unknown unit, or with several ranges, is ignored: 200 with the whole chunk."""
    chunk_id, data = await real_chunk(server, connect)
    status, headers, body = await call(server, "GET", f"/api/audio/chunks/{chunk_id}", headers={"Range": header})
    assert status == 200 and body == data
    assert "Content-Range" not in headers


# --- POST /api/audio/played ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_id", [UNKNOWN_ID, "xyz", "%00"])
async def test_ack_of_unknown_chunk_is_404(server, chunk_id):
    """POST /api/audio/played/{unknown or malformed id} is a 404 JSON error and records nothing."""
    status, _, body = await call(server, "POST", f"/api/audio/played/{chunk_id}")
    assert_error(status, body, 404)
    assert await deliveries(server) == 0


@pytest.mark.parametrize("connection_id", [UNKNOWN_ID, "xyz", ""])
async def test_ack_for_unknown_connection_is_404_and_records_nothing(server, connect, connection_id):
    """An ack naming a connection that does not exist is a 404 and records nothing; a plain ack still works."""
    chunk_id, _ = await real_chunk(server, connect)
    status, _, body = await call(server, "POST", f"/api/audio/played/{chunk_id}?connection_id={connection_id}")
    assert_error(status, body, 404, "connection")
    assert await deliveries(server) == 0
    status, _, body = await call(server, "POST", f"/api/audio/played/{chunk_id}")
    assert status == 200 and json.loads(body)["recorded"] is True


# --- methods and paths --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/channels/table/requests"),
        ("PUT", "/api/channels/table/requests"),
        ("DELETE", QUEUE),
        ("POST", QUEUE),
        ("DELETE", f"/api/audio/chunks/{UNKNOWN_ID}"),
        ("GET", f"/api/audio/played/{UNKNOWN_ID}"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_method_is_405_json(server, method, path):
    """A known path with the wrong HTTP method is a 405 JSON error with an Allow header."""
    status, headers, body = await call(server, method, path)
    error = assert_error(status, body, 405)
    assert headers.get("Allow")
    allowed = [m.strip() for m in headers["Allow"].split(",") if m.strip() != "OPTIONS"]
    assert error["message"].endswith(f"use {', '.join(allowed)}"), error  # not OPTIONS, a preflight's
    await assert_queue_empty(server)


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/api",
        "/api/channels",
        "/api/channels/table",
        "/api/audio/chunks/",
        "/api/channels/table/requests/extra",
        "/static/..%2f..%2fpyproject.toml",
    ],
)
async def test_unknown_path_is_404_json(server, path):
    """A path no route serves is a 404 JSON error."""
    status, _, body = await call(server, "GET", path)
    assert_error(status, body, 404)


async def test_missing_static_file_is_404_json(server):
    """A file missing under /static is a 404 JSON error like every other unknown path."""
    status, _, body = await call(server, "GET", "/static/nope.js")
    assert_error(status, body, 404)
    # a name longer than the file system allows is missing too, not a 500
    status, _, body = await call(server, "GET", "/static/" + "a" * 300)
    assert_error(status, body, 404)


async def test_made_up_channels_leave_nothing_behind(server):
    """Paths naming channels that do not exist are 404s that keep nothing: no credential cached per
    made-up name (an unbounded cache anyone could fill without a token)."""
    gate = server.station.gate
    for k in range(20):
        name = f"nobody-{k}-" + "x" * 200
        status, _, body = await call(server, "GET", f"/api/channels/{name}/beds/{'a' * 16}/{'b' * 16}")
        assert_error(status, body, 404)
        status, _, body = await call(server, "GET", f"/c/{name}/live.mp3")
        assert_error(status, body, 404)
    assert not [name for name in gate._keys if name.startswith("nobody-")]


async def test_plain_get_on_the_socket_path_is_400_json(server):
    """A plain HTTP GET (no WebSocket upgrade) on /ws/channels/{channel} is a 400 JSON error."""
    status, _, body = await call(server, "GET", "/ws/channels/table")
    assert_error(status, body, 400)


# --- WebSocket --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["nope", "..%2f..", "%00", "TABLE", "a" * 2000])
async def test_socket_to_unknown_channel_is_refused_with_404(server, channel):
    """Opening /ws/channels/{unknown} fails the handshake with a 404 and a JSON error body."""
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(server.ws_url(channel))
    assert refused.value.response.status_code == 404
    assert_error(404, refused.value.response.body, 404)


BAD_FRAMES = {
    "invalid json": ("{nope", "bad_request", "json"),
    "empty frame": ("", "bad_request", "json"),
    "json array": ('["time_sync"]', "bad_request", "type"),
    "json string": ('"time_sync"', "bad_request", "type"),
    "json number": ("1", "bad_request", "type"),
    "json null": ("null", "bad_request", "type"),
    "no type": ('{"t0": 1}', "bad_request", "type"),
    "type number": ('{"type": 1}', "bad_request", "type"),
    "type null": ('{"type": null}', "bad_request", "type"),
    "type list": ('{"type": ["time_sync"]}', "bad_request", "type"),
    "unknown type": ('{"type": "play_louder"}', "unknown_type", "play_louder"),
    "type in wrong case": ('{"type": "TIME_SYNC", "t0": 1}', "unknown_type", "TIME_SYNC"),
    "played without chunk_id": ('{"type": "audio_played"}', "bad_request", "chunk_id"),
    "played with malformed chunk_id": ('{"type": "audio_played", "chunk_id": "xyz"}', "bad_request", "chunk_id"),
    "played with chunk_id number": ('{"type": "audio_played", "chunk_id": 7}', "bad_request", "chunk_id"),
    "played with chunk_id list": (
        '{"type": "audio_played", "chunk_id": ["0123456789abcdef"]}',
        "bad_request",
        "chunk_id",
    ),
    "played with unknown chunk_id": (
        json.dumps({"type": "audio_played", "chunk_id": UNKNOWN_ID}),
        "not_found",
        UNKNOWN_ID,
    ),
    "time_sync without t0": ('{"type": "time_sync"}', "bad_request", "t0"),
    "time_sync t0 string": ('{"type": "time_sync", "t0": "1"}', "bad_request", "t0"),
    "time_sync t0 bool": ('{"type": "time_sync", "t0": true}', "bad_request", "t0"),
    "time_sync t0 null": ('{"type": "time_sync", "t0": null}', "bad_request", "t0"),
    "time_sync t0 NaN": ('{"type":"time_sync","t0":NaN}', "bad_request", "t0"),
    "time_sync t0 Infinity": ('{"type":"time_sync","t0":-Infinity}', "bad_request", "t0"),
    "time_sync t0 overflowing float": ('{"type":"time_sync","t0":1e999}', "bad_request", "t0"),
    "sync_report without counts": ('{"type": "sync_report", "error_ms": 1}', "bad_request", "glitches"),
    "sync_report negative count": (
        '{"type": "sync_report", "glitches": -1, "crossfades": 0, "error_ms": 1}',
        "bad_request",
        "glitches",
    ),
    "sync_report count too large": (
        '{"type": "sync_report", "glitches": 0, "crossfades": 1000001, "error_ms": 1}',
        "bad_request",
        "crossfades",
    ),
    "sync_report count a float": (
        '{"type": "sync_report", "glitches": 1.5, "crossfades": 0, "error_ms": 1}',
        "bad_request",
        "glitches",
    ),
    "sync_report count a bool": (
        '{"type": "sync_report", "glitches": true, "crossfades": 0, "error_ms": 1}',
        "bad_request",
        "glitches",
    ),
    "sync_report buffer moves past one": (
        '{"type": "sync_report", "glitches": 0, "crossfades": 0, "buffer_moves": 2, "error_ms": 1}',
        "bad_request",
        "buffer_moves",
    ),
    "sync_report error a string": (
        '{"type": "sync_report", "glitches": 0, "crossfades": 0, "error_ms": "1"}',
        "bad_request",
        "error_ms",
    ),
    "sync_report error NaN": (
        '{"type": "sync_report", "glitches": 0, "crossfades": 0, "error_ms": NaN}',
        "bad_request",
        "error_ms",
    ),
    "sync_report error huge": (
        '{"type": "sync_report", "glitches": 0, "crossfades": 0, "error_ms": 1e300}',
        "bad_request",
        "error_ms",
    ),
}
CODE_OF_FRAME = {frame: code for frame, code, _ in BAD_FRAMES.values()}


@pytest.mark.parametrize("frame, code, mentions", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_bad_socket_message_gets_an_error_and_the_socket_stays_usable(server, connect, frame, code, mentions):
    """Each malformed message is answered with an error of the right code; the socket still works afterwards."""
    listener, connection_id = await open_socket(connect)
    error = await ws_error(listener, frame)
    assert error["code"] == code
    assert mentions.lower() in error["message"].lower()
    assert await deliveries(server) == 0
    await assert_queue_empty(server)


async def test_binary_frame_gets_an_error_and_the_socket_stays_usable(server, connect):
    """A binary frame is answered with an error saying text frames are expected; the socket still works."""
    listener, _ = await open_socket(connect)
    error = await ws_error(listener, b'{"type": "time_sync", "t0": 1}')
    assert "binary" in error["message"]


async def test_time_sync_with_a_huge_integer_t0_gets_an_error(server, connect):
    """A t0 integer too large for a float is answered with an error, not a dropped connection."""
    listener, _ = await open_socket(connect)
    error = await ws_error(listener, '{"type": "time_sync", "t0": 1' + "0" * 400 + "}")
    assert "t0" in error["message"]


async def test_deeply_nested_message_gets_an_error(server, connect):
    """A small but deeply nested JSON message is answered with an error, not a dropped connection."""
    listener, _ = await open_socket(connect)
    await ws_error(listener, "[" * 2000 + "]" * 2000)


async def test_oversized_frame_closes_with_1009_and_other_listeners_carry_on(server, connect):
    """A text frame over ws_max_message_bytes closes that socket with 1009; another listener is unaffected."""
    offender, _ = await open_socket(connect)
    bystander, _ = await open_socket(connect)
    await offender.ws.send(json.dumps({"type": "time_sync", "t0": 1, "pad": "x" * 5000}))
    with pytest.raises(ConnectionClosed) as closed:
        await offender.next("never", timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await assert_usable(bystander)
    assert (await server.say("Life goes on.")).status == 202
    update = await bystander.next("playback_queue_updated")
    assert isinstance(update["queue"], list)
    ready = await bystander.next("audio_chunk_ready")
    assert ready["text"] == "Life goes on."


async def test_frame_at_the_size_limit_is_accepted(server, connect):
    """A frame of exactly ws_max_message_bytes is still processed normally."""
    listener, _ = await open_socket(connect)
    frame = '{"type": "time_sync", "t0": 1, "pad": "'
    frame += "x" * (4096 - len(frame) - 2) + '"}'
    assert len(frame.encode()) == 4096
    await listener.ws.send(frame)
    reply = await listener.next("time_sync", timeout=5)
    assert reply["t0"] == 1


async def test_a_flood_of_garbage_gets_every_error_reply_and_the_server_stays_healthy(server, connect):
    """200 garbage messages sent at once get 200 error replies in order, then a time_sync; /healthz stays 200."""
    listener, _ = await open_socket(connect)
    frames = [frame for frame, _, _ in BAD_FRAMES.values()]
    sent = [frames[i % len(frames)] for i in range(200)]
    for frame in sent:
        await listener.ws.send(frame)
    errors = [await listener.next("error", timeout=5) for _ in sent]
    assert [e["code"] for e in errors] == [CODE_OF_FRAME[f] for f in sent]
    await assert_usable(listener)
    assert [m["type"] for m in listener.messages].count("error") == 200
    status, health = await server.get_json("/healthz")
    assert status == 200 and health["status"] == "ok"
    await assert_queue_empty(server)


async def test_a_flood_larger_than_the_send_queue_loses_no_reply(server, connect):
    """Even 2000 garbage messages sent at once each get their error reply before the next time_sync reply.
    (Replies wait for room in the line; a broadcast that finds it full drops the listener as too slow,
    so the flood starts after the listener count that follows every join.)"""
    listener, _ = await open_socket(connect)
    await listener.next("listeners_changed")
    for _ in range(2000):
        await listener.ws.send("{nope")
    await assert_usable(listener)
    assert [m["type"] for m in listener.messages].count("error") == 2000
