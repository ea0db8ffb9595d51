"""Structured logs of a real server: ids on every line, and an access log without query strings."""

import io
import json
import logging

import aiohttp
import pytest

from broadcaster import logs


@pytest.fixture
def json_log(caplog: pytest.LogCaptureFixture):
    """Everything the server logs at INFO and above, as JSON lines in a string."""
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.INFO, logger="broadcaster")
    caplog.set_level(logging.INFO, logger="web")

    def entries() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield entries
    root.removeHandler(handler)


async def test_generation_lines_carry_channel_and_request_id(server, connect, json_log):
    """Every line is JSON, the generation line names its channel and request, and the submit's access line
    names the id the client got back as X-Request-Id."""
    listener = await connect()
    await listener.next("snapshot")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/{server.channel}/requests",
            json={"text": "Logs are tidy. Every line says where it came from."},
            headers={"Authorization": f"Bearer {server.token}"},
        ) as resp:
            assert resp.status == 202
            http_id = resp.headers["X-Request-Id"]
            request_id = (await resp.json())["request_id"]
    await listener.next("request_played", timeout=20)
    entries = json_log()
    generating = [e for e in entries if e["logger"] == "broadcaster.runtime.runner" and "generating" in e["msg"]]
    assert len(generating) == 1
    assert (generating[0]["channel"], generating[0]["request_id"]) == (server.channel, request_id)
    assert generating[0]["http_request"] is None  # generation is the channel's work, not the HTTP request's
    submit = [e for e in entries if e["logger"] == "broadcaster.access" and e["method"] == "POST"]
    assert len(submit) == 1
    assert submit[0]["http_request"] == http_id
    assert submit[0]["channel"] == server.channel
    assert (submit[0]["path"], submit[0]["status"]) == (f"/api/channels/{server.channel}/requests", 202)
    assert submit[0]["duration_ms"] >= 0
    assert submit[0]["ts"] and submit[0]["level"] == "INFO"


async def test_access_log_never_contains_the_query_string(server, json_log):
    """Listen keys and tokens in a query stay out of the access log, whatever the route or status."""
    paths = [
        f"/api/channels/{server.channel}/audio/queue?key=lk_SECRET1&token=bc_SECRET2",
        "/healthz?token=bc_SECRET3",
        "/nope?key=lk_SECRET4",
        "/metrics?SECRET5",
    ]
    async with aiohttp.ClientSession() as http:
        for path in paths:
            async with http.get(server.base_url + path) as resp:
                await resp.read()
    access = [e for e in json_log() if e["logger"] == "broadcaster.access"]
    assert [(e["path"], e["status"]) for e in access] == [
        (f"/api/channels/{server.channel}/audio/queue", 200),
        ("/healthz", 200),
        ("/nope", 404),
        ("/metrics", 200),
    ]
    for entry in access:
        assert "SECRET" not in json.dumps(entry)
        assert "?" not in entry["msg"]


async def fetch_chunk_and_a_missing_one(server, connect) -> str:
    """Fetch a chunk's audio (200) and a chunk that does not exist (404); the chunk's path."""
    listener = await connect()
    await listener.next("snapshot")
    assert (await server.say("Fetch me.")).status == 202
    path = (await listener.next("audio_chunk_ready"))["url"]
    async with aiohttp.ClientSession() as http:
        for url in (path, "/api/audio/chunks/0000000000000000"):
            async with http.get(server.base_url + url) as resp:
                await resp.read()
    return path


async def test_chunk_fetches_are_counted_but_only_failures_are_logged(server, connect, json_log):
    """Every listener fetches every sentence: a line each would flood the log."""
    path = await fetch_chunk_and_a_missing_one(server, connect)
    access = [(e["path"], e["status"]) for e in json_log() if e["logger"] == "broadcaster.access"]
    assert ("/api/audio/chunks/0000000000000000", 404) in access
    assert not any(p == path for p, _ in access)


@pytest.mark.server_config({"server": {"log_audio_fetches": True}})
async def test_chunk_fetches_are_logged_when_asked(server, connect, json_log):
    path = await fetch_chunk_and_a_missing_one(server, connect)
    access = [(e["path"], e["status"]) for e in json_log() if e["logger"] == "broadcaster.access"]
    assert (path, 200) in access and ("/api/audio/chunks/0000000000000000", 404) in access
