"""Listener pages and the console in a real browser, against a real server on loopback."""

import asyncio
import statistics
import subprocess
import time

import aiohttp
import pytest
import websockets
from conftest import Listener

from broadcaster.runtime.accounts import set_listen_key
from tts.encode import ffmpeg_exe
from web.messages import QUEUE_LISTED

SYNC_TOLERANCE_MS = 5
NARRATION = (
    "The caravan leaves at dawn. Dust rises over the dunes. The guide hums an old song. "
    "Far ahead, a tower glints in the sun."
)

# Its first sentence lasts about 6 s, so a page opened 200 ms into it (which takes a moment
# on a busy machine) still joins in the middle of it.
LONG_FIRST = "The caravan gathers in the grey hour, camels groaning while the drivers check every strap twice. "

pytestmark = pytest.mark.server_config(
    {
        "tts": {"tone_ms_per_char": 60, "tone_delay_ms": 20},
        "timeline": {"lead_ms": 800, "min_lead_ms": 800, "sentence_gap_ms": 150, "request_gap_ms": 300},
    }
)


async def open_listener(browser, server, page_errors):
    page = await browser.new_page(bypass_csp=True)
    page_errors.watch(page)
    await page.goto(f"{server.base_url}/c/{server.channel}")
    await page.click("#tune")
    await page.wait_for_function("document.getElementById('connection').dataset.state === 'live'")
    await page.wait_for_function("window.broadcaster.socket.clock.samples.length >= 8")
    return page


async def settled(pages) -> None:
    """Pages opened before a narration have their clocks settled: the connect burst meets a page at
    its busiest, and on a loaded machine its round trips can all be slow and lopsided (one page's
    offset was 10 ms off); a second or two of further samples give it quick ones."""
    for page in pages:
        await page.wait_for_function("window.broadcaster.socket.clock.samples.length >= 12", timeout=10000)


def worst(records: list[dict[str, dict]], chunk_ids: list[str]) -> list[str]:
    """For a failed sync assertion: each page's worst chunk against the timeline, and its clock then."""
    out = []
    for i, record in enumerate(records):
        entries = [(n, record[c]) for n, c in enumerate(chunk_ids) if c in record]
        n, e = max(entries, key=lambda ne: abs(ne[1]["sounds_at_local_ms"] - ne[1]["starts_at_ms"]))
        error = e["sounds_at_local_ms"] - e["starts_at_ms"]
        out.append(
            f"page {i}: chunk {n} {error:+.2f} ms (clock offset {e['offset_ms']:+.2f} ms, late {e['late_ms']:.0f} ms)"
        )
    return out


async def scheduled(page) -> dict[str, dict]:
    """The page's record of when each chunk will sound (latest entry per chunk wins)."""
    entries = await page.evaluate("window.broadcaster.stats.scheduled")
    return {e["chunk_id"]: e for e in entries}


async def wait_played(listener, request_id: str, timeout: float = 30) -> None:
    await listener.next("request_played", timeout=timeout, where=lambda m: m["request_id"] == request_id)


def sync_errors(pages_scheduled: list[dict[str, dict]], chunk_ids: list[str]) -> tuple[list[float], list[float]]:
    """Each page's error against the server timeline, and the spread between pages, per chunk."""
    against_server, spread = [], []
    for chunk_id in chunk_ids:
        times = [p[chunk_id]["sounds_at_local_ms"] for p in pages_scheduled if chunk_id in p]
        starts = [p[chunk_id]["starts_at_ms"] for p in pages_scheduled if chunk_id in p]
        against_server += [abs(t - s) for t, s in zip(times, starts)]
        spread.append(max(times) - min(times))
    return against_server, spread


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


async def test_listeners_and_a_late_joiner_schedule_every_chunk_together(browser, server, connect, page_errors):
    """Three listeners and one who joins mid-narration schedule each chunk within 5 ms of the timeline and of each other."""
    observer = await connect()
    await observer.next("snapshot")
    pages = [await open_listener(browser, server, page_errors) for _ in range(3)]
    await settled(pages)
    request_id = (await (await server.say(LONG_FIRST + NARRATION)).json())["request_id"]
    first = await observer.next("audio_chunk_ready")
    await asyncio.sleep(max(0.0, (first["starts_at_ms"] + 200 - server.station.clock()) / 1000))
    pages.append(await open_listener(browser, server, page_errors))  # joins while the first sentence sounds
    await wait_played(observer, request_id)
    chunk_ids = [m["chunk_id"] for m in observer.messages if m["type"] == "audio_chunk_ready"]
    records = [await scheduled(p) for p in pages]
    assert all(set(chunk_ids) <= set(r) for r in records[:3])
    assert set(chunk_ids[1:]) <= set(records[3]) and records[3][chunk_ids[0]]["late_ms"] > 0
    against_server, spread = sync_errors(records, chunk_ids)
    # The browser trims the MP3's encoder delay and padding: what it plays is exactly the chunk.
    assert all(abs(e["decoded_ms"] - e["duration_ms"]) <= 2 for r in records for e in r.values())
    assert p95(against_server) <= SYNC_TOLERANCE_MS, worst(records, chunk_ids)
    assert p95(spread) <= SYNC_TOLERANCE_MS, spread
    # With their acknowledgements the first three pages said when the first chunk, placed one lead
    # ahead, was in hand (the late joiner found it in its snapshot): within the lead, on loopback.
    count, total_s = await ready_reports(server, at_least=3)
    assert 3 <= count <= 4 * len(chunk_ids) - 1
    assert 0 < total_s / count < 0.8
    assert page_errors.errors == []


async def ready_reports(server, at_least: int, timeout_s: float = 10) -> tuple[float, float]:
    """broadcaster_listener_ready_seconds' count and sum once `at_least` reports are in (acks follow each chunk's end)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(int(timeout_s * 10)):
            async with http.get(server.base_url + "/metrics") as resp:
                lines = dict(line.split(" ", 1) for line in (await resp.text()).splitlines() if line[:1] != "#")
            count = float(lines["broadcaster_listener_ready_seconds_count"])
            if count >= at_least:
                return count, float(lines["broadcaster_listener_ready_seconds_sum"])
            await asyncio.sleep(0.1)
    return count, float(lines["broadcaster_listener_ready_seconds_sum"])


async def test_captions_follow_the_narration(browser, server, connect, page_errors):
    """The page shows the narration as captions and highlights the sentence being spoken; once it has
    played, nothing is shown on the air."""
    observer = await connect()
    await observer.next("snapshot")
    page = await open_listener(browser, server, page_errors)
    request_id = (await (await server.say(NARRATION)).json())["request_id"]
    await page.wait_for_selector("#captions span.current")
    assert "The caravan leaves at dawn." in await page.inner_text("#captions")
    await wait_played(observer, request_id)
    assert await page.inner_text("#listeners") == "2 listening"
    await page.wait_for_function("document.getElementById('captions').textContent === 'Nothing on the air'")


async def test_dropped_connection_reconnects_and_stays_in_sync(browser, server, connect, page_errors):
    """A page whose socket is cut reconnects by itself and schedules later chunks in sync."""
    observer = await connect()
    await observer.next("snapshot")
    page = await open_listener(browser, server, page_errors)
    request_id = (await (await server.say(NARRATION)).json())["request_id"]
    await observer.next("audio_chunk_ready")
    await page.evaluate("window.broadcaster.socket.drop()")
    await page.wait_for_function("document.getElementById('connection').dataset.state === 'reconnecting'")
    await page.wait_for_function("document.getElementById('connection').dataset.state === 'live'", timeout=10000)
    second = (await (await server.say("After the storm, silence. Then birds.")).json())["request_id"]
    await wait_played(observer, request_id)
    await wait_played(observer, second)
    chunks = [m for m in observer.messages if m["type"] == "audio_chunk_ready" and m["request_id"] == second]
    record = await scheduled(page)
    for chunk in chunks:
        assert abs(record[chunk["chunk_id"]]["sounds_at_local_ms"] - chunk["starts_at_ms"]) <= SYNC_TOLERANCE_MS
    assert page_errors.errors == []


async def test_a_page_keeps_sampling_the_clock_quickly_after_it_connects(browser, server, page_errors):
    """The connect burst meets the page at its busiest, when round trips are slowest: samples keep
    coming every half second for a while (then every 5 s), so quick round trips soon decide the offset."""
    page = await open_listener(browser, server, page_errors)
    await page.wait_for_function("window.broadcaster.socket.clock.samples.length >= 14", timeout=8000)
    received = await page.evaluate("window.broadcaster.socket.clock.samples.map((s) => s.at)")
    after_burst = [b - a for a, b in zip(received[8:], received[9:])]
    assert after_burst and min(after_burst) >= 300, after_burst  # a steady pace, not a longer burst
    assert page_errors.errors == []


@pytest.mark.server_config(
    {
        "tts": {"tone_ms_per_char": 60, "tone_delay_ms": 20},
        "timeline": {"lead_ms": 3000, "min_lead_ms": 3000, "sentence_gap_ms": 150, "request_gap_ms": 300},
    }
)
async def test_a_page_reconnecting_while_the_next_request_is_in_its_lead_keeps_its_first_chunk(
    browser, server, connect, page_errors
):
    """With a lead longer than the gap between requests (as a large audience's grows), the next
    request's first chunk is announced while the one before still sounds. A page that reconnects then
    finds it in its snapshot (in that request's queue item) and keeps it, instead of dropping it as a
    chunk no longer on the air, and plays it in sync."""
    observer = await connect()
    await observer.next("snapshot")
    page = await open_listener(browser, server, page_errors)
    await server.say(LONG_FIRST)
    second = (await (await server.say("The second one.")).json())["request_id"]
    chunk = await observer.next("audio_chunk_ready", where=lambda m: m["request_id"] == second)
    await page.evaluate("window.broadcaster.socket.drop()")
    await page.wait_for_function("document.getElementById('connection').dataset.state === 'reconnecting'")
    await page.wait_for_function("document.getElementById('connection').dataset.state === 'live'", timeout=10000)
    first_ends_ms = chunk["starts_at_ms"] - 300
    assert time.time() * 1000 < first_ends_ms, "the page came back after the first request ended: nothing tested"
    assert await page.evaluate("(id) => window.broadcaster.chunks.has(id)", chunk["chunk_id"]), "the chunk was dropped"
    await wait_played(observer, second)
    record = await scheduled(page)
    assert abs(record[chunk["chunk_id"]]["sounds_at_local_ms"] - chunk["starts_at_ms"]) <= SYNC_TOLERANCE_MS
    assert page_errors.errors == []


async def test_console_narration_is_played_by_every_listener(browser, server, connect, page_errors):
    """Narration typed in the console (Enter sends) is scheduled by every listener page."""
    observer = await connect()
    await observer.next("snapshot")
    listeners = [await open_listener(browser, server, page_errors) for _ in range(2)]
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console")
    await console.fill("#token", server.token)
    await console.click("#login button[type=submit]")
    await console.wait_for_selector("#desk:not([hidden])")
    # the observer socket and two pages listen; the console itself is not counted
    await console.wait_for_function("document.getElementById('listeners').textContent === '3 listening'")
    await console.fill("#text", "Roll for initiative. The goblins attack!")
    await console.press("#text", "Enter")
    started = await observer.next("audio_stream_started")
    assert started["text"] == "Roll for initiative. The goblins attack!"
    await wait_played(observer, started["request_id"])
    chunk_ids = [m["chunk_id"] for m in observer.messages if m["type"] == "audio_chunk_ready"]
    for page in listeners:
        assert set(chunk_ids) <= set(await scheduled(page))
    assert await console.input_value("#text") == ""
    assert page_errors.errors == []


async def test_a_long_queue_shows_its_head_and_how_many_more_the_console_all_of_it(browser, server, page_errors):
    """Listeners are sent the next 20 of a long queue and count the rest; the console lists every one."""
    await server.control("pause")
    for n in range(QUEUE_LISTED + 5):
        assert (await server.say(f"Item {n} of a long queue.")).status == 202
    listener = await open_listener(browser, server, page_errors)
    items = listener.locator("#queue li")
    await listener.wait_for_function("document.querySelectorAll('#queue li').length > 20")
    # the first request is on its way to the air (being made), not in the queue
    assert await items.count() == QUEUE_LISTED + 1
    assert await items.last.text_content() == "and 4 more"
    await server.say("One more at the end.")
    await listener.wait_for_function("[...document.querySelectorAll('#queue li')].pop().textContent === 'and 5 more'")
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console#token={server.token}")
    await console.wait_for_selector("#queue button[aria-label^='Cancel: One more at the end']")
    assert await console.locator("#queue button[aria-label^='Cancel: ']").count() == QUEUE_LISTED + 5
    assert page_errors.errors == []


async def test_console_skip_and_cancel_update_every_page(browser, server, connect, page_errors):
    """Skipping from the console stops the narration on the listener pages and clears it from the console."""
    observer = await connect()
    await observer.next("snapshot")
    listener = await open_listener(browser, server, page_errors)
    console = await browser.new_page(bypass_csp=True)
    await console.goto(f"{server.base_url}/c/{server.channel}/console#token={server.token}")
    await console.wait_for_selector("#desk:not([hidden])")
    await server.say(LONG_FIRST + NARRATION)  # ~14 s: still on the air when a loaded machine gets to the skip
    queued = (await (await server.say("A second narration waits.")).json())["request_id"]
    await observer.next("audio_chunk_ready")
    await console.click("#queue button[aria-label^='Cancel: A second narration']")
    cancelled = await observer.next("request_cancelled", timeout=30)
    assert cancelled["request_id"] == queued
    await console.click("#now button[aria-label^='Skip: The caravan']")
    try:
        skipped = await observer.next("request_cancelled", timeout=30)
    except TimeoutError:  # say what the console and the channel were doing (it failed so once in a full run)
        notice, now = await console.text_content("#notice"), await console.text_content("#now")
        told = [m["type"] for m in observer.messages[-8:]]
        raise AssertionError(
            f"no skip in 30 s; the console said {notice!r}, showed {now!r}; last heard {told}"
        ) from None
    assert skipped["skipped"] is True
    await listener.wait_for_function("document.querySelector('#captions em') !== null")
    assert "token" not in console.url
    assert page_errors.errors == []


async def test_console_says_what_became_of_a_send_or_an_upload_beside_it_then_clears_it(
    browser, server, tmp_path, page_errors
):
    """A refused upload is explained next to the upload form, not at the foot of the page; a refused
    narration next to the text; and each line clears once it is old news (timers run fast here)."""
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console#token={server.token}")
    await console.wait_for_selector("#desk:not([hidden])")
    await console.clock.install()  # from here the page's timers run only as the test moves its clock
    fake = tmp_path / "song.mp3"
    fake.write_bytes(b"this is not audio at all " * 100)
    await console.set_input_files("#track-file", str(fake))
    await console.click("#upload button[type=submit]")
    await text_becomes(console, "#upload-status", lambda text: "refused" in text)
    assert "error" in await console.get_attribute("#upload-status", "class")
    assert await console.text_content("#notice") == ""
    await console.fill("#text", "Go. " * 201)  # over [limits] max_sentences
    await console.press("#text", "Enter")
    await text_becomes(console, "#say-status", lambda text: text.startswith("Not sent"))
    await console.fill("#text", "Roll for initiative.")
    await console.press("#text", "Enter")
    await text_becomes(console, "#say-status", lambda text: text.startswith("Queued"))
    await console.clock.run_for(9000)
    assert await console.text_content("#say-status") == ""  # done: cleared after 8 s
    assert "refused" in await console.text_content("#upload-status")  # a refusal stays longer
    await console.clock.run_for(30000)
    assert await console.text_content("#upload-status") == ""
    assert page_errors.errors == []


async def text_becomes(page, selector: str, wanted, timeout_s: float = 15) -> None:
    """Polled from here: with the page's clock installed, waits that run on its timers would not."""
    async with asyncio.timeout(timeout_s):
        while not wanted(await page.text_content(selector) or ""):
            await asyncio.sleep(0.05)


async def test_console_refuses_a_wrong_token(browser, server, page_errors):
    """A wrong token is refused with a plain message and no controls are shown."""
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console")
    await console.fill("#token", "bc_not-the-token")
    await console.click("#login button[type=submit]")
    await console.wait_for_selector("#login-error:not(:empty)")
    assert "not valid" in await console.inner_text("#login-error")
    assert await console.is_hidden("#desk")
    assert page_errors.errors == []


async def test_music_plays_in_sync_like_narration(browser, server, connect, page_errors, tmp_path):
    """An uploaded track is scheduled by every page within 5 ms of the timeline, with its title shown."""
    song = tmp_path / "song.ogg"
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=330:duration=7",
            "-ac",
            "2",
            "-c:a",
            "libopus",
            "-metadata",
            "title=Night Drive",
            "-metadata",
            "artist=Tape Loop",
            str(song),
        ],
        check=True,
        timeout=60,
    )
    observer = await connect()
    await observer.next("snapshot")
    pages = [await open_listener(browser, server, page_errors) for _ in range(2)]
    await settled(pages)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/{server.channel}/tracks",
            data=song.read_bytes(),
            headers={"Authorization": f"Bearer {server.token}", "Content-Type": "audio/ogg"},
        ) as resp:
            request_id = (await resp.json())["request_id"]
    await pages[0].wait_for_function("document.getElementById('captions').textContent.includes('Night Drive')")
    captions = await pages[0].inner_text("#captions")
    assert "Tape Loop" in captions and "(0:07)" in captions
    await wait_played(observer, request_id)
    chunk_ids = [m["chunk_id"] for m in observer.messages if m["type"] == "audio_chunk_ready"]
    assert len(chunk_ids) == 2  # 7 s in 5 s segments
    records = [await scheduled(p) for p in pages]
    against_server, spread = sync_errors(records, chunk_ids)
    assert max(against_server) <= SYNC_TOLERANCE_MS and max(spread) <= SYNC_TOLERANCE_MS
    assert all(abs(e["decoded_ms"] - e["duration_ms"]) <= 2 for r in records for e in r.values())
    assert page_errors.errors == []


async def test_console_uploads_a_track_and_sets_repeat(browser, server, connect, page_errors, tmp_path):
    """From the console a producer uploads a track (it goes on the air) and sets the repeat mode."""
    song = tmp_path / "Coffee Break.ogg"
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=2", "-c:a", "libopus", str(song)],
        check=True,
        timeout=60,
    )
    observer = await connect()
    await observer.next("snapshot")
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console#token={server.token}")
    await console.wait_for_selector("#desk:not([hidden])")
    await console.select_option("#repeat", "all")
    update = await observer.next("playback_queue_updated", where=lambda m: m["repeat"] == "all")
    assert update["repeat"] == "all"
    await console.set_input_files("#track-file", str(song))
    await console.click("#upload button[type=submit]")
    started = await observer.next("audio_stream_started")
    assert started["kind"] == "track" and started["title"] == "Coffee Break"
    await console.wait_for_function("document.getElementById('upload-status').textContent.includes('Coffee Break')")
    assert page_errors.errors == []


async def test_private_channel_plays_from_the_shared_link_and_explains_without_it(browser, server, page_errors):
    """The link with ?key= plays every chunk (socket and fetches carry the key); without it, a plain page says why."""
    key = await set_listen_key(server.station.store, server.channel, private=True)
    stranger = await browser.new_page(bypass_csp=True)
    response = await stranger.goto(f"{server.base_url}/c/{server.channel}")
    assert response.status == 401
    assert "private channel" in await stranger.inner_text("h1")
    page = await browser.new_page(bypass_csp=True)
    page_errors.watch(page)
    await page.goto(f"{server.base_url}/c/{server.channel}?key={key}")
    await page.click("#tune")
    await page.wait_for_function("window.broadcaster.socket.clock.samples.length >= 8")
    producer = {"Authorization": f"Bearer {server.token}"}  # a listener admitted by the token (never in the URL)
    async with websockets.connect(server.ws_url(), additional_headers=producer) as ws:
        observer = Listener(ws)
        await observer.next("snapshot")
        request_id = (await (await server.say(NARRATION)).json())["request_id"]
        await wait_played(observer, request_id)
    chunk_ids = [m["chunk_id"] for m in observer.messages if m["type"] == "audio_chunk_ready"]
    assert len(chunk_ids) == 4 and set(chunk_ids) <= set(await scheduled(page))
    assert page_errors.errors == []


async def test_a_page_whose_key_was_replaced_while_it_was_away_says_so(browser, server, page_errors):
    """A socket refused before it opens tells a page nothing (the browser hides the 401): after a few
    such tries the page asks the channel why, says so, and stops retrying."""
    key = await set_listen_key(server.station.store, server.channel, private=True)
    page = await browser.new_page(bypass_csp=True)
    page_errors.watch(page)
    await page.goto(f"{server.base_url}/c/{server.channel}?key={key}")
    await page.click("#tune")
    await page.wait_for_selector("#connection[data-state=live]")
    await page.evaluate("window.broadcaster.socket.drop()")  # away (asleep) when the key is replaced
    await set_listen_key(server.station.store, server.channel, private=True)
    await server.station.gate.current(server.channel)  # known at once: no socket opens with the old key
    await page.wait_for_selector("#connection[data-state=refused]", timeout=30_000)
    assert "listen key" in await page.text_content("#connection")
    assert page_errors.errors == []


async def test_console_scene_buttons_set_the_bed_and_pause_stops_every_page(
    browser, server, connect, page_errors, tmp_path, monkeypatch
):
    """The console lists the channel's ambience folder as buttons; one click puts a folder under the
    line for everyone, the stop button fades it out; pause and resume are one button."""
    from media import tone

    scenes = tmp_path / "music" / server.channel / "ambience"
    (scenes / "Tavern").mkdir(parents=True)
    tone(scenes / "Tavern" / "rain.wav", 3, 150)
    tone(scenes / "wind.wav", 2, 120)
    monkeypatch.chdir(tmp_path)
    observer = await connect()
    await observer.next("snapshot")
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console#token={server.token}")
    await console.wait_for_selector("#scenes button")
    assert [await b.text_content() for b in await console.query_selector_all("#scenes button")] == [
        "\U0001f4c1 Tavern",
        "wind",
    ]
    await console.click("#scenes button[aria-label='Play Tavern under the line']")
    changed = await observer.next("bed_changed")
    assert changed["bed"]["source"] == f"{server.channel}/ambience/Tavern"
    await console.wait_for_function("document.getElementById('bed-now').textContent.includes('rain')")
    await console.click("#stop-bed")
    assert (await observer.next("bed_changed"))["bed"] is None
    await console.click("#pause")
    await observer.next("channel_paused")
    await console.wait_for_function("document.getElementById('pause').textContent === 'Resume for everyone'")
    await console.click("#pause")
    await observer.next("channel_resumed")
    assert page_errors.errors == []


@pytest.mark.server_config({"tts": {"voices": {"innkeeper": {"speed": 0.9}, "bard": {"speed": 1.2}}}})
async def test_console_offers_the_named_voices_and_narrates_in_the_one_chosen(browser, server, page_errors):
    console = await browser.new_page(bypass_csp=True)
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console#token={server.token}")
    await console.wait_for_selector("#voice-choice:not([hidden])")
    options = await console.eval_on_selector_all("#voice option", "(os) => os.map((o) => o.textContent)")
    assert options == ["default", "bard", "innkeeper"]
    await console.select_option("#voice", "innkeeper")
    await console.fill("#text", "Welcome to the Drowned Lantern.")
    await console.press("#text", "Enter")
    await console.wait_for_function("document.getElementById('say-status').textContent.startsWith('Queued')")
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    items = [i for i in (state["now_playing"], *state["queue"], *state["recent"]) if i]
    assert [i.get("voice") for i in items] == ["innkeeper"]


async def test_an_open_narration_shows_that_more_is_being_written_until_it_is_closed(browser, server, page_errors):
    page = await open_listener(browser, server, page_errors)
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.base_url}/api/channels/{server.channel}/requests"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"text": "The fog lifts. Then", "open": True}, headers=headers) as resp:
            request_id = (await resp.json())["request_id"]
        await page.wait_for_selector("#captions #writing")
        assert "The fog lifts." in await page.text_content("#captions")
        async with http.post(f"{url}/{request_id}/text", json={"text": " the bells.", "final": True}, headers=headers):
            pass
    await page.wait_for_selector("#captions #writing", state="detached")


async def test_both_pages_work_within_their_content_security_policy(browser, server, page_errors):
    """With the policy enforced (other tests let Playwright evaluate scripts past it), the listener page
    tunes in, connects and shows the narration's captions, and the console signs in: nothing refused."""
    page = await browser.new_page()
    page_errors.watch(page)
    await page.goto(f"{server.base_url}/c/{server.channel}")
    await page.click("#tune")
    await page.wait_for_selector("#connection[data-state=live]")
    assert (await server.say("Within the policy, the captions still show.")).status == 202
    await page.wait_for_selector("#captions span.current", timeout=15_000)
    console = await browser.new_page()
    page_errors.watch(console)
    await console.goto(f"{server.base_url}/c/{server.channel}/console")
    await console.fill("#token", server.token)
    await console.click("#login button[type=submit]")
    await console.wait_for_selector("#desk:not([hidden])")
    assert page_errors.errors == []


async def test_console_shows_a_track_and_the_talk_over_on_top_of_it(browser, server, connect, tmp_path, monkeypatch):
    """On the air, the console shows a track as a track (no sentence count) and a talk-over narration
    beside it, with its own Skip."""
    from media import tone

    (tmp_path / "music").mkdir()
    tone(tmp_path / "music" / "hum.wav", 20, 100, tags={"title": "Hum", "artist": "The Testers"})
    monkeypatch.chdir(tmp_path)
    observer = await connect()
    await observer.next("snapshot")
    headers = {"Authorization": f"Bearer {server.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/table/tracks", json={"path": "hum.wav"}, headers=headers
        ) as resp:
            assert resp.status == 202
        await observer.next("audio_stream_started", where=lambda m: m["kind"] == "track")
        console = await browser.new_page(bypass_csp=True)
        await console.goto(f"{server.base_url}/c/{server.channel}/console#token={server.token}")
        await console.wait_for_selector("#desk:not([hidden])")
        await console.wait_for_function("document.getElementById('now').textContent.includes('The Testers - Hum')")
        assert "sentences" not in await console.inner_text("#now")
        body = {"text": "Stand-up in five minutes, in the big room.", "over": True}
        async with http.post(f"{server.base_url}/api/channels/table/requests", json=body, headers=headers) as resp:
            assert resp.status == 202
    await console.wait_for_function("document.getElementById('now').textContent.includes('(over the music)')")
    assert await console.locator("#now button[aria-label^='Skip: Stand-up']").count() == 1
