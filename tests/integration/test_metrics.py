"""GET /metrics on a real server: real traffic moves the numbers it reports."""

import asyncio
import os
import re
import shutil

import aiohttp
import pytest

from web.keys import METRICS

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


class Scrape:
    """A parsed exposition: every sample by name and labels; every sample's family declared first."""

    def __init__(self, text: str):
        self.samples: dict[tuple[str, frozenset], float] = {}
        self.types: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                self.types[name] = kind
            elif line and not line.startswith("#"):
                name, labels, value = SAMPLE.fullmatch(line).groups()
                family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in self.types else name
                assert family in self.types, f"sample {name} comes before its TYPE line"
                self.samples[name, frozenset(LABEL.findall(labels or ""))] = float(value)

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 if it is not there (a series appears with its first event)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        wanted = set(labels.items())
        found = [
            (float(dict(key)["le"]), value)
            for (sample, key), value in self.samples.items()
            if sample == name + "_bucket" and wanted <= set(key)
        ]
        return sorted(found)


async def scrape(server) -> Scrape:
    return Scrape(await exposition(server))


async def exposition(server) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.base_url + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            return await resp.text()


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            return await resp.read()


async def test_narration_listening_and_acks_move_the_metrics(server, connect):
    """Submitting, generating, fetching, streaming and acknowledging each change their metric by what was done."""
    before = await scrape(server)
    listener = await connect()
    await listener.next("snapshot")
    submitted = await server.say("The metrics are flowing. Here is a second sentence.")
    assert submitted.status == 202
    chunks = [await listener.next("audio_chunk_ready"), await listener.next("audio_chunk_ready")]
    played = await listener.next("request_played", timeout=20)
    streamed = await fetch(f"{server.base_url}/api/audio/stream/{played['request_id']}")
    fetched = await fetch(server.base_url + chunks[0]["url"])
    await listener.send({"type": "audio_played", "chunk_id": chunks[0]["chunk_id"]})
    await listener.next("ack_recorded")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/api/audio/played/{chunks[1]['chunk_id']}") as resp:
            assert resp.status == 200
    after = await scrape(server)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert after.types["broadcaster_chunk_generation_seconds"] == "histogram"
    assert delta("broadcaster_chunk_generation_seconds_count", kind="speech") == 2
    assert delta("broadcaster_chunk_generation_seconds_sum", kind="speech") > 0
    buckets = after.buckets("broadcaster_chunk_generation_seconds", kind="speech")
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative
    assert buckets[-1] == (float("inf"), 2)
    assert delta("broadcaster_stream_bytes_total", kind="chunk") == len(fetched)
    assert delta("broadcaster_stream_bytes_total", kind="progressive") == len(streamed)
    assert delta("broadcaster_ack_lag_seconds_count", via="ws") == 1
    assert delta("broadcaster_ack_lag_seconds_count", via="http") == 1
    assert after.value("broadcaster_listeners", channel=server.channel, kind="websocket") == 1
    assert after.value("broadcaster_listeners", channel=server.channel, kind="live") == 0
    assert after.value("broadcaster_requests", channel=server.channel, state="played") == 1
    assert after.value("broadcaster_requests", channel=server.channel, state="pending") == 0
    assert after.value("broadcaster_underruns_total", channel=server.channel) == 0
    # the first scrape, the submit, the stream, the chunk and the HTTP ack; the socket counts when it closes
    assert delta("broadcaster_http_responses_total", status_class="2xx") == 5
    assert delta("broadcaster_http_responses_total", status_class="1xx") == 0
    assert after.value("broadcaster_process_resident_memory_bytes") > 10_000_000
    assert after.value("broadcaster_process_open_fds") > 3
    assert after.value("broadcaster_python_heap_blocks") > 10_000
    assert after.value("broadcaster_malloc_in_use_bytes") > 1_000_000  # numpy, SQLite, buffers at least
    assert after.value("broadcaster_malloc_free_bytes") > 0
    assert delta("broadcaster_broadcast_seconds_count") >= 4  # queue update, stream start, chunks, played
    assert after.value("broadcaster_sqlite_memory_bytes") > 10_000  # the server's open connections
    # the chunk fetched (its MP3) and the stream's FLAC reads are cached
    assert after.value("broadcaster_chunk_cache_bytes") >= len(fetched) > before.value("broadcaster_chunk_cache_bytes")
    assert after.value("broadcaster_uptime_seconds") > before.value("broadcaster_uptime_seconds") > 0


@pytest.mark.server_config({"tts": {"tone_delay_ms": 900}})
async def test_a_late_chunk_counts_as_an_underrun(server, connect):
    """A second sentence synthesized too slowly shifts the timeline, and the underrun and its silence are counted."""
    listener = await connect()
    await listener.next("snapshot")
    await server.say("Go. This second sentence is ready far too late.")
    shifted = await listener.next("timeline_shifted", timeout=20)
    after = await scrape(server)
    assert after.value("broadcaster_underruns_total", channel=server.channel) == 1
    assert after.value("broadcaster_underrun_seconds_total", channel=server.channel) == shifted["shift_ms"] / 1000


@pytest.mark.server_config({"tts": {"tone_fail_marker": "[explode]"}})
async def test_a_failed_request_is_counted(server, connect):
    """A request the engine cannot speak counts once as failed, in the counter and in the state gauge."""
    before = await scrape(server)
    assert before.value("broadcaster_requests_failed_total", channel=server.channel) == 0
    listener = await connect()
    await listener.next("snapshot")
    await server.say("This is fine. This will [explode] now.")
    await listener.next("request_failed", timeout=20)
    after = await scrape(server)
    assert after.value("broadcaster_requests_failed_total", channel=server.channel) == 1
    assert after.value("broadcaster_requests", channel=server.channel, state="failed") == 1


async def test_live_player_is_a_listener_and_its_bytes_are_counted(server):
    """An open live.mp3 shows as one live listener, and at least the bytes it received are counted."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/c/{server.channel}/live.mp3") as resp:
            received = len(await resp.content.readexactly(8192))
            during = await scrape(server)
    assert during.value("broadcaster_listeners", channel=server.channel, kind="live") == 1
    assert during.value("broadcaster_stream_bytes_total", kind="live") >= received


async def test_each_server_has_its_own_registry(server, tmp_path):
    """Two servers in one process keep separate numbers."""
    from conftest import start_server

    runner, other = await start_server(tmp_path / "other")
    try:
        await server.say("Only the first server hears this.")
        assert server.app[METRICS] is not other.app[METRICS]
        assert (await scrape(other)).value("broadcaster_http_responses_total", status_class="2xx") == 0
    finally:
        await runner.cleanup()


@pytest.mark.server_config({"server": {"metrics_token": "scrape-me"}})
async def test_metrics_token_when_configured(server):
    """With [server] metrics_token set, /metrics answers 401 without it and the figures with it."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/metrics") as resp:
            assert resp.status == 401 and "metrics_token" in (await resp.json())["error"]["message"]
        async with http.get(f"{server.base_url}/metrics", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(f"{server.base_url}/metrics", headers={"Authorization": "Bearer scrape-me"}) as resp:
            assert resp.status == 200 and "broadcaster_uptime_seconds" in await resp.text()


async def test_exposition_passes_promtool(server, connect):
    """Prometheus' own linter (`promtool check metrics`) finds nothing wrong with a scrape taken after real traffic."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("BROADCASTER_REQUIRE_BROWSER") == "1":
            pytest.fail("promtool is required here (BROADCASTER_REQUIRE_BROWSER=1) but was not found")
        pytest.skip("no promtool on this machine (apt-get install prometheus)")
    listener = await connect()
    await listener.next("snapshot")
    await server.say("Lint me.")
    await listener.next("request_played", timeout=20)
    text = await exposition(server)
    check = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    findings, _ = await check.communicate(text.encode())
    assert (check.returncode, findings.decode()) == (0, "")


async def test_listener_sync_reports_are_counted_and_answer_nothing(server, connect):
    """What pages report of keeping in step (glitches, crossfades since the last report, their error) adds
    up in /metrics; the report gets no reply, and the next time_sync answer is the next message."""
    pages = ((2, 1, {"buffer_moves": 1}, 0.4), (1, 1, {}, -30.0))  # the second page's is one from before buffer_moves
    for glitches, crossfades, moved, error_ms in pages:
        listener = await connect()
        await listener.next("snapshot")
        await listener.send(
            {"type": "sync_report", "glitches": glitches, "crossfades": crossfades, **moved, "error_ms": error_ms}
        )
        await listener.send({"type": "time_sync", "t0": 7})
        reply = await listener.next("time_sync")
        assert reply["t0"] == 7 and not [m for m in listener.messages if m["type"] == "error"]
        assert reply["t1_us"] // 1000 == reply["t1"] and reply["t2_us"] // 1000 == reply["t2"]
        assert reply["t1_us"] <= reply["t2_us"]
    await listener.send({"type": "sync_report", "glitches": 1000, "crossfades": 1000, "error_ms": 60_000})
    refused = await listener.next("error")  # a page reports every 10 s; not twice in 5
    assert refused["code"] == "rate_limited" and 0 < refused["retry_after_ms"] <= 5000

    found = await scrape(server)
    assert found.value("broadcaster_listener_output_glitches_total") == 3
    assert found.value("broadcaster_listener_resyncs_total") == 2
    assert found.value("broadcaster_listener_buffer_moves_total") == 1
    assert found.value("broadcaster_listener_sync_error_seconds_count") == 2
    assert dict(found.buckets("broadcaster_listener_sync_error_seconds"))[0.001] == 1  # 0.4 ms; 30 ms is above
