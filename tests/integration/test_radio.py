"""Office radio behaviour: queue controls, repeat at the ends of the queue, the auto-DJ giving way."""

import json
from datetime import datetime
from pathlib import Path
from random import Random

import aiohttp
import pytest
import websockets
from media import tone

from broadcaster.config import config_from_dict
from broadcaster.errors import BadInput
from broadcaster.runtime.accounts import create_channel

QUICK = {"tts": {"tone_ms_per_char": 8}, "timeline": {"lead_ms": 300, "sentence_gap_ms": 50, "request_gap_ms": 100}}
pytestmark = pytest.mark.server_config(QUICK)


async def post(
    server, path: str, body: dict | None = None, channel: str | None = None, token: str | None = None
) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.base_url}/api/channels/{channel or server.channel}{path}",
            json=body or {},
            headers={"Authorization": f"Bearer {token or server.token}"},
        ) as resp:
            return resp.status, await resp.json()


async def queue_ids(server) -> list[str]:
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    return [item["request_id"] for item in state["queue"]]


async def played_texts(listener, count: int, timeout: float = 30) -> list[str]:
    """Texts of the next `count` requests to finish playing, in order."""
    texts = []
    while len(texts) < count:
        message = await listener.next("request_played", timeout=timeout)
        started = [
            m
            for m in listener.messages
            if m["type"] == "audio_stream_started" and m["request_id"] == message["request_id"]
        ]
        texts.append(started[-1]["text"])
    return texts


async def fill_queue(server, listener, count: int) -> list[str]:
    ids = [
        (await (await server.say(f"Item {i} is a sentence that takes a while to say.")).json())["request_id"]
        for i in range(count)
    ]
    await listener.next("audio_chunk_ready")
    return ids


async def test_shuffle_permutes_the_waiting_requests_only(server, connect):
    """Shuffle reorders everything not yet on the air; the request on the air stays where it is."""
    listener = await connect()
    await listener.next("snapshot")
    ids = await fill_queue(server, listener, 6)
    server.station.rng = Random(4)
    status, _ = await post(server, "/queue/shuffle")
    assert status == 200
    after = await queue_ids(server)
    assert sorted(after) == sorted(ids[1:]) and after != ids[1:]
    update = await listener.next(
        "playback_queue_updated", where=lambda m: [q["request_id"] for q in m["queue"]] == after
    )
    assert update["repeat"] == "off"


async def test_move_reorders_and_refuses_what_cannot_move(server, connect):
    """A waiting request moves to a new position; the on-air one and bad positions are refused clearly."""
    listener = await connect()
    await listener.next("snapshot")
    ids = await fill_queue(server, listener, 4)
    status, _ = await post(server, f"/requests/{ids[3]}/move", {"position": 1})
    assert status == 200 and await queue_ids(server) == [ids[3], ids[1], ids[2]]
    status, body = await post(server, f"/requests/{ids[0]}/move", {"position": 2})
    assert status == 409 and "on the air" in body["error"]["message"]
    status, body = await post(server, f"/requests/{ids[1]}/move", {"position": 99})
    assert status == 409 and "position" in body["error"]["message"]
    status, body = await post(server, f"/requests/{ids[1]}/move", {"position": "first"})
    assert status == 400
    await post(server, f"/requests/{ids[2]}/cancel")
    status, body = await post(server, f"/requests/{ids[2]}/move", {"position": 1})
    assert status == 409 and "not in the line" in body["error"]["message"]
    assert await queue_ids(server) == [ids[3], ids[1]]


async def test_repeat_one_plays_the_same_request_again_until_turned_off(server, connect):
    """With repeat one, a request plays again right after itself; turning it off lets the queue move on."""
    listener = await connect()
    await listener.next("snapshot")
    assert (await post(server, "/queue/repeat", {"mode": "one"}))[0] == 200
    await server.say("Again.")
    await server.say("Next.")
    assert await played_texts(listener, 2) == ["Again.", "Again."]
    await post(server, "/queue/repeat", {"mode": "off"})
    texts = []
    while "Next." not in texts and len(texts) < 6:  # copies already queued still play, then the queue moves on
        texts += await played_texts(listener, 1)
    assert texts[-1] == "Next." and set(texts[:-1]) <= {"Again."}


async def test_skip_under_repeat_one_moves_on(server, connect):
    """Skipping the request on the air under repeat one goes to the next request, not to its copy."""
    listener = await connect()
    await listener.next("snapshot")
    await post(server, "/queue/repeat", {"mode": "one"})
    looping = (await (await server.say("Loop me. " * 3)).json())["request_id"]
    await server.say("Escape.")
    await listener.next("audio_chunk_ready", where=lambda m: m["request_id"] == looping)
    await listener.next("playback_queue_updated", where=lambda m: len(m["queue"]) == 2)  # the copy is queued
    assert (await post(server, f"/requests/{looping}/skip"))[0] == 200
    await post(server, "/queue/repeat", {"mode": "off"})
    assert await played_texts(listener, 1) == ["Escape."]


async def test_repeat_all_cycles_through_the_queue(server, connect):
    """With repeat all, the queue starts over after its last request."""
    listener = await connect()
    await listener.next("snapshot")
    await post(server, "/queue/repeat", {"mode": "all"})
    await server.say("First.")
    await server.say("Second.")
    assert await played_texts(listener, 4) == ["First.", "Second.", "First.", "Second."]
    await post(server, "/queue/repeat", {"mode": "off"})


async def test_repeat_mode_must_be_known(server):
    """An unknown repeat mode is a 400 and changes nothing."""
    status, body = await post(server, "/queue/repeat", {"mode": "forever"})
    assert status == 400 and "off" in body["error"]["message"]
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert state["repeat"] == "off"


@pytest.fixture
def music(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three short tagged tracks in ./music (the default folder), made with the bundled ffmpeg."""
    folder = tmp_path / "music"
    folder.mkdir()
    for i, freq in enumerate((330, 440, 550)):
        tone(folder / f"song{i}.flac", 1.2, freq, tags={"title": f"Song {i}"})
    (folder / "notes.txt").write_text("not music")
    monkeypatch.chdir(tmp_path)
    return folder


async def test_auto_dj_plays_every_track_once_then_gives_way_to_narration(music, server):
    """On a radio channel the auto-DJ deals every track before repeating one, and narration submitted
    during a track plays at the next track boundary."""
    made = await create_channel(server.station.store, "office", style="radio")
    started = []
    async with websockets.connect(server.ws_url("office")) as ws:
        while len(started) < 5:
            message = json.loads(await ws.recv())
            if message["type"] != "audio_stream_started":
                continue
            started.append(message)
            if len(started) == 2:
                status, _ = await post(server, "/requests", {"text": "Lunch is ready."}, "office", made.token)
                assert status == 202
    kinds = [(m["kind"], m.get("auto")) for m in started]
    assert started[2]["text"] == "Lunch is ready." and kinds[2] == ("speech", None)
    songs = [m["title"] for m in started if m["kind"] == "track"]
    assert all(kind == ("track", True) for kind in kinds[:2] + kinds[3:])
    assert len(set(songs[:3])) == 3  # all three before any repeats


async def test_campaign_channels_have_no_auto_dj(music, server, connect):
    """A campaign channel stays silent when nothing is queued."""
    assert server.channel not in server.station.autodjs
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert state["now_playing"] is None and state["queue"] == []


@pytest.mark.server_config(
    {
        "schedule": [
            {"channel": "table", "cron": "55 9 * * 1-5", "say": "Stand-up in five minutes."},
            {"channel": "nowhere", "cron": "55 9 * * *", "say": "Lost."},
        ]
    }
)
async def test_scheduled_item_is_queued_at_its_minute_once(server):
    """A [[schedule]] entry queues its item in its minute, once; an entry for an unknown channel is skipped."""
    monday_0955 = int(datetime(2026, 11, 23, 9, 55, 20).timestamp() * 1000)
    scheduler = server.station.scheduler
    fired = await scheduler.tick(monday_0955)
    assert [e.say for e in fired] == ["Stand-up in five minutes.", "Lost."]
    assert await scheduler.tick(monday_0955 + 10_000) == []  # same minute: not again
    assert await scheduler.tick(monday_0955 + 60_000) == []  # 09:56: nothing due
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    texts = [item["text"] for item in state["queue"]] + ([state["now_playing"]["text"]] if state["now_playing"] else [])
    assert texts == ["Stand-up in five minutes."]


def test_schedule_entries_are_validated():
    """A schedule entry with a bad cron or both say and track is refused when the config loads."""
    for entry in (
        {"channel": "a", "cron": "61 * * * *", "say": "x"},
        {"channel": "a", "cron": "* * * * *", "say": "x", "track": "y.mp3"},
        {"channel": "a", "cron": "* * * * *"},
        {"channel": "a", "cron": "* * * * *", "say": "x", "over": "yes"},
        {"channel": "a", "cron": "* * * * *", "track": "y.mp3", "over": True},
    ):
        with pytest.raises(BadInput):
            config_from_dict({"schedule": [entry]})
    talk = {"channel": "a", "cron": "* * * * *", "say": "Lunch is served.", "over": True}
    assert config_from_dict({"schedule": [talk]}).schedule[0].over is True


async def radio_starts(server, count: int) -> list[dict]:
    """Make a radio channel "office" and collect its first `count` audio_stream_started messages."""
    await create_channel(server.station.store, "office", style="radio")
    started = []
    async with websockets.connect(server.ws_url("office")) as ws:
        while len(started) < count:
            message = json.loads(await ws.recv())
            if message["type"] == "audio_stream_started":
                started.append(message)
    return started


@pytest.mark.server_config({"radio": {"announce_next": True}})
async def test_auto_dj_announces_the_next_track(music, server):
    """With announce_next, a spoken "Up next" with the title plays before each following auto-DJ track."""
    started = await radio_starts(server, 3)
    assert [m["kind"] for m in started] == ["track", "speech", "track"]
    assert started[1]["text"] == f"Up next: {started[2]['title']}."


@pytest.mark.server_config({"radio": {"station_id_every": 2}})
async def test_station_identification_every_other_track(music, server):
    """With station_id_every = 2 the station's name is spoken before every second auto-DJ track."""
    started = await radio_starts(server, 4)
    assert [m["kind"] for m in started] == ["track", "speech", "track", "track"]
    assert started[1]["text"] == "You are listening to office."
