"""What a client with a producer token (or none) can send that must not break anything: a clear 4xx,
nothing changed, nothing read or decoded beyond what is bounded. Found by attacking the real server."""

import asyncio
import io
import json
import re
import struct

import aiohttp
import pytest
import websockets
from media import tone
from sqlalchemy import func, select

from db.models import DeliveryRow
from web.keys import CONFIG, METRICS

QUEUE = "/api/channels/table/audio/queue"


async def send(server, method: str, path: str, token: bool = True, **kw) -> tuple[int, dict, bytes]:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {server.token}"
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.request(method, f"{server.base_url}{path}", headers=headers, **kw) as resp:
            return resp.status, dict(resp.headers), await resp.read()


def error_of(body: bytes) -> dict:
    return json.loads(body)["error"]


@pytest.fixture
def music(tmp_path, monkeypatch):
    """The default ./music folder, with a 20-second tone and a folder for a bed."""
    folder = tmp_path / "music"
    (folder / "ambience").mkdir(parents=True)
    tone(folder / "hum.wav", 20, 100)
    tone(folder / "ambience" / "a.wav", 3, 150)
    monkeypatch.chdir(tmp_path)
    return folder


async def test_nul_in_appended_text_is_refused_and_changes_nothing(server):
    """PostgreSQL cannot store U+0000: a narration or an append carrying one is refused before it
    reaches the channel, whose saves would otherwise fail from then on."""
    status, _, body = await send(server, "POST", "/api/channels/table/requests", json={"text": "Once", "open": True})
    assert status == 202
    request_id = json.loads(body)["request_id"]
    path = f"/api/channels/table/requests/{request_id}/text"
    status, _, body = await send(server, "POST", path, json={"text": " upon\x00 a time. More"})
    assert status == 400 and "NUL" in error_of(body)["message"]
    _, state = await server.get_json(QUEUE)
    assert state["now_playing"] is None and [item["text"] for item in state["queue"]] == ["Once"]
    assert (await send(server, "POST", path, json={"text": " upon a time.", "final": True}))[0] == 202


@pytest.mark.server_config({"limits": {"max_sentences": 5}})
async def test_sentences_beyond_the_limit_are_refused_also_when_appended(server):
    """Each sentence is a chunk to make: past max_sentences a narration, or an append to one, is a 400."""
    status, _, body = await send(server, "POST", "/api/channels/table/requests", json={"text": "A b. " * 6})
    assert status == 400 and "at most 5 sentences" in error_of(body)["message"]
    status, _, body = await send(
        server, "POST", "/api/channels/table/requests", json={"text": "A b. " * 3, "open": True}
    )
    assert status == 202
    path = f"/api/channels/table/requests/{json.loads(body)['request_id']}/text"
    status, _, body = await send(server, "POST", path, json={"text": "C d. " * 3})
    assert status == 400 and "got 6 with this append" in error_of(body)["message"]
    assert (await send(server, "POST", path, json={"text": "C d. E", "final": True}))[0] == 202


@pytest.mark.parametrize("mode", [["all"], {"all": 1}, 1, None, True])
async def test_a_repeat_mode_of_the_wrong_type_is_400(server, mode):
    """A repeat mode that is not a string (a list cannot even be looked up in a set) is a 400, not a 500."""
    status, _, body = await send(server, "POST", "/api/channels/table/queue/repeat", json={"mode": mode})
    assert status == 400 and "repeat mode" in error_of(body)["message"]
    assert (await server.get_json(QUEUE))[1]["repeat"] == "off"


async def test_music_paths_too_long_for_the_file_system_are_not_found(server, music):
    """A name component past the file system's 255 bytes makes the lookup itself fail (ENAMETOOLONG)."""
    for path in ("a" * 300, "a/" * 400, "ambience/" + "b" * 300 + ".wav"):
        status, _, body = await send(server, "POST", "/api/channels/table/tracks", json={"path": path})
        assert status == 404, body
    status, _, body = await send(server, "POST", "/api/channels/table/tracks", json={"path": "a" * 5000})
    assert status == 400 and "at most 1000" in error_of(body)["message"]
    for key in ("path", "folder"):
        status, _, body = await send(server, "PUT", "/api/channels/table/bed", json={key: "a" * 300})
        assert status == 404, body
    _, state = await server.get_json(QUEUE)
    assert state["now_playing"] is None and state["queue"] == [] and state["bed"] is None


MULTIPART = "multipart/form-data"


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        (MULTIPART, b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\nabc\r\n--x--\r\n"),  # no boundary
        (f"{MULTIPART}; boundary=x", b"garbage without any boundary at all"),
        (f"{MULTIPART}; boundary=x", b""),
        (f"{MULTIPART}; boundary=x", b"--x\r\nContent-Disposition: form-data; name=" + b"f" * 10_000 + b"\r\n\r\n"),
    ],
    ids=["no boundary", "no parts", "empty", "header line too long"],
)
async def test_a_multipart_body_that_does_not_parse_is_400(server, content_type, data):
    """A form that is not one (no boundary, no parts, nothing, a header line past aiohttp's limit) is a 400."""
    status, _, body = await send(
        server, "POST", "/api/channels/table/tracks", data=data, headers={"Content-Type": content_type}
    )
    assert status == 400, body
    assert error_of(body)["code"] in ("bad_request", "unreadable_body")
    assert not list((server.app[CONFIG].data_path / "uploads").glob("*"))


async def test_form_fields_besides_the_file_are_small(server):
    """A form field that is not the file is read and dropped only up to 64 KiB, not to its end."""
    form = aiohttp.FormData()
    form.add_field("note", io.BytesIO(b"x" * (1024 * 1024)), filename="note.txt", content_type="text/plain")
    form.add_field("file", io.BytesIO(b"RIFF"), filename="a.wav", content_type="audio/wav")
    status, _, body = await send(server, "POST", "/api/channels/table/tracks", data=form)
    assert status == 413 and "other than the file" in error_of(body)["message"]


@pytest.mark.parametrize(("fields", "size"), [(20, 4 * 1024), (1000, 0)], ids=["large together", "many"])
async def test_form_fields_besides_the_file_are_few_and_small_together(server, fields, size):
    """Many fields, each small, before the file: the form is refused, not read to its end."""
    form = aiohttp.FormData()
    for k in range(fields):
        form.add_field(f"note{k}", "x" * size)
    form.add_field("file", io.BytesIO(b"RIFF"), filename="a.wav", content_type="audio/wav")
    status, _, body = await send(server, "POST", "/api/channels/table/tracks", data=form)
    assert status == 413 and "other than the file" in error_of(body)["message"], body
    assert not list((server.app[CONFIG].data_path / "uploads").glob("*"))


@pytest.mark.parametrize("path", ["/api/channels/table/requests", "/api/channels/table/tracks"])
async def test_a_body_that_does_not_decompress_is_a_json_400(server, path):
    """A body whose Content-Encoding lies is a JSON 400, and nothing is queued."""
    broken = b"\x1f\x8b\x08\x00 this was never compressed"
    for encoding in ("gzip", "deflate"):
        status, _, body = await send(
            server,
            "POST",
            path,
            data=broken,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
        assert status == 400 and error_of(body)["code"] == "unreadable_body", body
    _, state = await server.get_json(QUEUE)
    assert state["now_playing"] is None and state["queue"] == []


@pytest.mark.server_config({"limits": {"http_acks_per_second": 0.01, "http_ack_burst": 5}})
async def test_acknowledgements_over_http_are_rate_limited_per_address(server, connect):
    """Anonymous acknowledgements are rows: past the address's bucket they are a 429 and nothing is stored."""
    listener = await connect()
    await listener.next("snapshot")
    assert (await server.say("A sentence to acknowledge.")).status == 202
    chunk_id = (await listener.next("audio_chunk_ready"))["chunk_id"]
    statuses = [(await send(server, "POST", f"/api/audio/played/{chunk_id}", token=False))[0] for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    status, headers, body = await send(server, "POST", f"/api/audio/played/{chunk_id}", token=False)
    assert status == 429 and int(headers["Retry-After"]) > 0 and "acknowledgements" in error_of(body)["message"]
    await server.station.store.ack_log.flush()
    async with server.station.store.session() as s:
        assert await s.scalar(select(func.count()).select_from(DeliveryRow)) == 5


@pytest.mark.server_config({"limits": {"max_queue": 3}})
async def test_talk_over_counts_against_the_queue_limit(server, connect, music):
    """Talk-over narrations wait beside the line, and count against max_queue with it."""
    listener = await connect()
    await listener.next("snapshot")
    assert (await send(server, "POST", "/api/channels/table/tracks", json={"path": "hum.wav"}))[0] == 202
    await listener.next("audio_stream_started", where=lambda m: m["kind"] == "track")
    answers = []
    for i in range(4):
        body = {"text": f"Announcement number {i}.", "over": True}
        answers.append((await send(server, "POST", "/api/channels/table/requests", json=body))[0])
    assert answers == [202, 202, 429, 429]
    _, state = await server.get_json(QUEUE)
    assert len(state["over"]) + len(state["queue"]) + (state["now_playing"] is not None) <= 3


async def test_queue_updates_carry_a_preview_of_long_texts(server, connect):
    """Every queue update carries the whole line: a waiting request's text is cut to 200 characters
    there, while the one on the air keeps all of it."""
    listener = await connect()
    await listener.next("snapshot")
    long_text = "The caravan crossed the dunes at night, and nobody spoke. " * 60
    for _ in range(2):
        assert (await server.say(long_text)).status == 202
    await listener.next("audio_stream_started")
    update = await listener.next("playback_queue_updated", where=lambda m: len(m["queue"]) == 1)
    waiting = update["queue"][0]["text"]
    assert len(waiting) == 200 and waiting.endswith("…") and long_text.startswith(waiting[:-1])
    _, state = await server.get_json(QUEUE)
    assert state["now_playing"]["text"] == long_text and len(state["queue"][0]["text"]) == 200


async def test_head_on_audio_streams_sends_headers_and_no_audio(server, connect):
    """HEAD gets a GET's headers and no body, which a keep-alive connection would otherwise misread."""
    listener = await connect()
    await listener.next("snapshot")
    assert (await server.say("A sentence with a stream.")).status == 202
    request_id = (await listener.next("audio_stream_started"))["request_id"]
    for path in ("/c/table/live.mp3", f"/api/audio/stream/{request_id}"):
        head, after = await raw_head(server, path)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Type: audio/mpeg" in head, head
        assert after == b"", f"{path}: {len(after)} bytes after the headers of a HEAD"


async def raw_head(server, path: str, listen_s: float = 1.5) -> tuple[bytes, bytes]:
    """HEAD over a plain socket (an HTTP client would not read a body it knows is not there): the
    response's head, and whatever came after it within `listen_s`."""
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    received = b""
    try:
        async with asyncio.timeout(listen_s):
            while data := await reader.read(65536):
                received += data
    except TimeoutError:
        pass
    finally:
        writer.close()
    head, _, after = received.partition(b"\r\n\r\n")
    return head, after


async def test_a_huge_offset_is_400(server, connect):
    """An offset too long for Python to read as a number is a 400, not a 500."""
    listener = await connect()
    await listener.next("snapshot")
    assert (await server.say("A sentence with a stream.")).status == 202
    request_id = (await listener.next("audio_stream_started"))["request_id"]
    for offset in ("9" * 5000, "0" * 4400 + "1"):
        status, _, body = await send(server, "GET", f"/api/audio/stream/{request_id}?offset_ms={offset}", token=False)
        assert status == 400 and "offset_ms" in error_of(body)["message"]


async def test_a_refused_move_does_not_echo_a_huge_number(server):
    """The 409 for a position out of range quotes at most the start of it."""
    for text in ("First one.", "Second one."):
        assert (await server.say(text)).status == 202
    _, state = await server.get_json(QUEUE)
    request_id = state["queue"][-1]["request_id"]
    data = b'{"position": ' + b"9" * 4000 + b"}"
    status, _, body = await send(
        server,
        "POST",
        f"/api/channels/table/requests/{request_id}/move",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    assert status == 409 and len(error_of(body)["message"]) < 200


async def test_track_tags_are_one_line_and_bounded(server, tmp_path):
    """Tags are the uploader's text: a title over lines, an artist of 60 000 characters, a NUL and
    a direction override in the file name all come out as one short line."""
    song = tone(tmp_path / "song.flac", 1, 300, tags={"title": "Line one\nLine two\\", "artist": "x" * 60_000})
    status, _, body = await send(
        server, "POST", "/api/channels/table/tracks", data=song.read_bytes(), headers={"Content-Type": "audio/flac"}
    )
    assert status == 202, body
    track = json.loads(body)
    assert track["title"] == "Line one Line two\\" and track["artist"] == "x" * 200
    untagged = tone(tmp_path / "plain.flac", 1, 300)
    status, _, body = await send(
        server,
        "POST",
        "/api/channels/table/tracks?filename=a%00b%E2%80%AEc.flac",
        data=untagged.read_bytes(),
        headers={"Content-Type": "audio/flac"},
    )
    assert status == 202 and json.loads(body)["title"] == "a b c"


async def test_a_refused_decode_does_not_name_server_paths(server):
    """ffmpeg's own words explain a refusal, but not where the server writes or heap addresses."""
    fmt = struct.pack("<HHIIHH", 1, 1024, 8000, 8000 * 1024 * 2, 1024 * 2, 16)
    wav = b"RIFF" + struct.pack("<I", 36 + 4096) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
    wav += b"data" + struct.pack("<I", 4096) + bytes(4096)
    status, _, body = await send(
        server, "POST", "/api/channels/table/tracks", data=wav, headers={"Content-Type": "audio/wav"}
    )
    assert status == 422, body
    message = error_of(body)["message"]
    assert "does not decode" in message and "track.flac" not in message
    assert not re.search(r"0x[0-9a-f]{6,}", message) and str(server.app[CONFIG].data_path) not in message


async def test_acknowledging_made_up_chunks_costs_no_database_reads(server, connect, monkeypatch):
    """A socket may send 20 messages a second: acknowledgements of chunks that are not on the channel's
    timeline are refused from memory, so a flood of made-up ids reads nothing from the database."""
    reads = []
    store = server.station.store
    original = store.chunk
    monkeypatch.setattr(store, "chunk", lambda chunk_id: reads.append(chunk_id) or original(chunk_id))
    listener = await connect()
    await listener.next("snapshot")
    assert (await server.say("A sentence to acknowledge.")).status == 202
    chunk_id = (await listener.next("audio_chunk_ready"))["chunk_id"]
    for made_up in ("0123456789abcdef", "fedcba9876543210"):
        await listener.send({"type": "audio_played", "chunk_id": made_up})
        assert (await listener.next("error"))["code"] == "not_found"
    await listener.send({"type": "audio_played", "chunk_id": chunk_id})
    assert (await listener.next("ack_recorded"))["duplicate"] is False
    assert reads == []


async def test_one_client_reconnecting_cannot_report_a_chunk_to_the_lead_again(server, connect):
    """The lead follows the slowest listeners' reports of when they had a chunk ready: a client that
    reconnects to report the same chunk again is heard once, as an address with one connection open."""
    observer = await connect()
    await observer.next("snapshot")
    assert (await server.say("One sentence for the lead.")).status == 202
    chunk = await observer.next("audio_chunk_ready")
    await observer.ws.close()
    metrics = server.app[METRICS].registry

    def reports() -> float:
        return metrics.get_sample_value("broadcaster_listener_ready_seconds_count") or 0

    before = reports()
    for _ in range(3):
        async with websockets.connect(server.ws_url()) as ws:
            await ws.recv()  # the snapshot
            await ws.send(
                json.dumps(
                    {"type": "audio_played", "chunk_id": chunk["chunk_id"], "ready_at_ms": chunk["starts_at_ms"] + 2500}
                )
            )
            while (reply := json.loads(await ws.recv()))["type"] != "ack_recorded":
                pass
            assert reply["duplicate"] is False  # each connection's acknowledgement is still recorded
    assert reports() - before == 1


@pytest.mark.server_config({"limits": {"max_queue": 3}})
async def test_narrations_posted_at_once_do_not_slip_past_the_queue_limit(server):
    """Twenty POSTs at once against max_queue = 3 (the channel paused, so nothing leaves the line): the
    check is made where the request is queued, so three are taken and the others get 429; each had
    passed the check before any was queued, and all twenty were."""
    assert (await send(server, "POST", "/api/channels/table/pause"))[0] == 200
    answers = await asyncio.gather(
        *(send(server, "POST", "/api/channels/table/requests", json={"text": f"Number {i}."}) for i in range(20))
    )
    assert sorted(status for status, *_ in answers) == [202] * 3 + [429] * 17
    _, state = await server.get_json(QUEUE)
    assert len(state["queue"]) + (state["now_playing"] is not None) == 3
