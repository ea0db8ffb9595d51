"""What a listener page fetches and keeps, and the sentence it highlights, in a real browser against a
real server on loopback: a track's segments only as they come within the page's window ahead, none a
late joiner has missed, no decoded audio once played; every sentence highlighted in turn."""

import asyncio

import aiohttp
import pytest
from media import tone

pytestmark = pytest.mark.server_config(
    {
        "tts": {"tone_ms_per_char": 30, "tone_delay_ms": 20},
        "timeline": {"lead_ms": 800, "min_lead_ms": 800, "sentence_gap_ms": 150, "request_gap_ms": 300},
    }
)

WINDOW_MS = 15000  # FETCH_AHEAD_MS in web/static/listener.js
TRACK_S = 90
SENTENCES = (
    "The ship leaves at noon. Gulls circle the mast. The captain counts the crates. A boy runs up late. "
    "The ropes are cast off. The harbour falls behind. The wind fills the sails. Night comes on the sea."
)


@pytest.fixture
def music(tmp_path, monkeypatch):
    (tmp_path / "music").mkdir()
    tone(tmp_path / "music" / "long.wav", TRACK_S, 220)  # 18 segments of 5 s
    monkeypatch.chdir(tmp_path)  # the default music folder is ./music


async def open_listener(browser, server, page_errors, fetched: dict[str, float] | None = None):
    """A tuned-in listener page; with `fetched`, each chunk it requests goes in as chunk id -> server ms."""
    page = await browser.new_page(bypass_csp=True)
    page_errors.watch(page)
    if fetched is not None:
        marker = "/api/audio/chunks/"

        def note(request) -> None:
            if marker in request.url:
                fetched.setdefault(request.url.split(marker, 1)[1].split("?")[0], server.station.clock())

        page.on("request", note)
    await page.goto(f"{server.base_url}/c/{server.channel}")
    await page.click("#tune")
    await page.wait_for_function("window.broadcaster.socket.clock.samples.length >= 8")
    return page


async def until_server_ms(server, at_ms: float) -> None:
    await asyncio.sleep(max(0.0, (at_ms - server.station.clock()) / 1000))


async def test_a_long_track_is_fetched_a_window_ahead_let_go_once_played_and_skipped_where_over(
    browser, server, connect, page_errors, music
):
    """A page fetches a 90 s track's segments only within its window ahead, each well before it sounds,
    lets their decoded audio go once played, and a late joiner fetches none of those already over."""
    observer = await connect()
    await observer.next("snapshot")
    early_fetched: dict[str, float] = {}
    early = await open_listener(browser, server, page_errors, early_fetched)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/{server.channel}/tracks",
            json={"path": "long.wav"},
            headers={"Authorization": f"Bearer {server.token}"},
        ) as resp:
            assert resp.status == 202, await resp.text()
            request_id = (await resp.json())["request_id"]
    song = await observer.next("audio_stream_started", where=lambda m: m["request_id"] == request_id)
    segments = [
        await observer.next("audio_chunk_ready", where=lambda m: m["request_id"] == request_id)
        for _ in range(song["chunks_total"])
    ]
    announced_ms = server.station.clock()
    assert len(segments) == TRACK_S // 5
    start_ms = segments[0]["starts_at_ms"]
    await until_server_ms(server, start_ms + 12000)
    late_fetched: dict[str, float] = {}
    joined_ms = server.station.clock()
    late = await open_listener(browser, server, page_errors, late_fetched)  # segments 0 and 1 are over
    await until_server_ms(server, start_ms + 22000)
    watched_ms = server.station.clock()

    by_id = {s["chunk_id"]: s for s in segments}
    ahead = {by_id[c]["seq"]: by_id[c]["starts_at_ms"] - at for c, at in early_fetched.items()}
    assert max(ahead.values()) <= WINDOW_MS + 1000, f"fetched further ahead than the window (ms by seq): {ahead}"
    for s in segments:
        if s["starts_at_ms"] <= watched_ms:  # sounded while watched: in hand well before it did
            assert s["chunk_id"] in early_fetched, f"segment {s['seq']} was never fetched"
            at_ms = early_fetched[s["chunk_id"]]
            assert at_ms <= max(announced_ms + 1000, s["starts_at_ms"] - 5000), f"segment {s['seq']} fetched late"
    over = {s["chunk_id"] for s in segments if s["starts_at_ms"] + s["duration_ms"] <= joined_ms}
    assert len(over) == 2 and not over & set(late_fetched), "the late joiner fetched segments already over"
    assert any(by_id[c]["starts_at_ms"] <= joined_ms + 1000 for c in late_fetched), "the late joiner missed the now"
    decoded = """() => {
      const now = window.broadcaster.socket.clock.serverMs();
      const held = [...window.broadcaster.chunks.values()].filter((c) => c.buffer);
      return { held: held.length, played: held.filter((c) => c.starts_at_ms + c.duration_ms < now - 1000).length };
    }"""
    for page in (early, late):
        held = await page.evaluate(decoded)
        assert held["played"] == 0, f"decoded audio of segments played is still held: {held}"
        assert held["held"] <= WINDOW_MS // 5000 + 2, f"more segments decoded than the window needs: {held}"
    assert page_errors.errors == []


async def test_every_sentence_is_highlighted_in_turn_after_the_speaker_delay_changes(
    browser, server, connect, page_errors
):
    """A speaker delay set mid-narration re-times the waiting sentences; each is still highlighted in turn."""
    observer = await connect()
    await observer.next("snapshot")
    page = await open_listener(browser, server, page_errors)
    await page.evaluate(
        """() => {
          window.highlighted = [];
          setInterval(() => {
            const span = document.querySelector("#captions span.current");
            const text = span ? span.textContent.trim() : null;
            if (text && window.highlighted[window.highlighted.length - 1] !== text) window.highlighted.push(text);
          }, 10);
        }"""
    )
    request_id = (await (await server.say(SENTENCES)).json())["request_id"]
    first = await observer.next("audio_chunk_ready", where=lambda m: m["request_id"] == request_id)
    await until_server_ms(server, first["starts_at_ms"] + 1200)  # into the narration; the rest waits
    await page.fill("#latency", "150")
    await page.dispatch_event("#latency", "change")
    await observer.next("request_played", timeout=60, where=lambda m: m["request_id"] == request_id)
    chunks = [m for m in observer.messages if m["type"] == "audio_chunk_ready" and m["request_id"] == request_id]
    assert len(chunks) == 8
    highlighted = await page.evaluate("window.highlighted")
    assert highlighted == [c["text"] for c in chunks], f"highlighted {highlighted}"
    assert page_errors.errors == []
