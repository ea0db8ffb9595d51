"""live.mp3 and progressive streams on a cluster member that does not run the channel: it renders and
encodes them itself, from its replica of the channel, and the owner serves none of it.

Two in-process members on real PostgreSQL and Redis (tests/integration/test_cluster.py); real ffmpeg
players and decoders."""

import asyncio
import re

import aiohttp
import numpy as np
import pytest

from broadcaster.runtime.accounts import create_channel
from integration.test_cluster import owner_of, post, start_member
from integration.test_shared_audio import decoded_seconds
from tts.encode import ffmpeg_exe
from web.keys import CLUSTER, LIVE, METRICS, STATION

SLOW_TONES = {"tts": {"tone_ms_per_char": 45, "tone_delay_ms": 500}}  # chunks announced one by one
RATE = 22050
TEXT = "The first thing to say is this. And then another thing. The last words come at the end."


@pytest.fixture
async def members(tmp_path, postgres_url, redis_url):
    """Two members; the first to take the channel "table" runs it, the other does not."""
    started = [await start_member(tmp_path, postgres_url, redis_url, SLOW_TONES) for _ in range(2)]
    made = await create_channel(started[0].station.store, "table")
    owner = await owner_of("table", *started)
    yield owner, next(m for m in started if m is not owner), made.token
    for member in started:
        await member.stop()


def sent_bytes(member, kind: str) -> float:
    """Audio bytes of `kind` ("live", "progressive") the member wrote to its players."""
    return sum(
        sample.value
        for metric in member.app[METRICS].stream_bytes.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("kind") == kind
    )


async def play_live(url: str, seconds: int) -> tuple[np.ndarray, str]:
    """A real player: ffmpeg decodes `seconds` of the stream to PCM; its log shows the title changes."""
    player = await asyncio.create_subprocess_exec(
        ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "verbose",
        "-t",
        str(seconds),
        "-i",
        url,
        "-f",
        "s16le",
        "-ac",
        "1",
        "-ar",
        str(RATE),
        "pipe:1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    pcm, err = await asyncio.wait_for(player.communicate(), seconds + 30)
    assert player.returncode == 0, err.decode()[-2000:]
    return np.frombuffer(pcm, dtype="<i2"), err.decode()


async def test_live_mp3_on_the_member_that_does_not_run_the_channel_plays_the_narration(members):
    """A player of live.mp3 on the other member hears the narration posted to the owner: its title shows,
    audio well above silence arrives, and the stream is rendered there; the owner encodes no live stream
    and nothing was forwarded to it."""
    owner, other, token = members

    playing = asyncio.create_task(play_live(f"{other.base_url}/c/table/live.mp3", 12))
    await asyncio.sleep(1.5)
    status, body = await post(owner, "table", token, TEXT)
    assert status == 202, body
    pcm, log = await playing

    assert TEXT in re.findall(r"Metadata update for StreamTitle: (.*)", log)
    assert len(pcm) >= 11 * RATE
    loud = [np.abs(pcm[i : i + RATE // 10]).max() for i in range(0, len(pcm), RATE // 10)]
    assert sum(peak > 2000 for peak in loud) >= 20, "less than two seconds of the narration were heard"
    assert loud[0] < 100, "the stream began with silence, before the narration was posted"
    assert list(owner.app[LIVE].streams) == [] and sent_bytes(owner, "live") == 0
    assert sent_bytes(other, "live") > 100_000
    assert other.app[CLUSTER].forwarder.forwarded == 0


async def test_a_progressive_stream_from_the_member_that_does_not_run_the_channel_is_the_whole_request(members):
    """A progressive stream opened on the other member as soon as the narration is posted follows its chunks
    as they are announced and ends with the request: every chunk and gap, made there; the owner sent none."""
    owner, other, token = members

    status, body = await post(owner, "table", token, TEXT)
    assert status == 202, body
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{other.base_url}/api/audio/stream/{body['request_id']}") as resp,
    ):
        assert resp.status == 200
        first = await resp.content.readexactly(1000)
        heard = owner.app[STATION].runners["table"].channel.find_request(body["request_id"])
        assert heard.state == "generating" and not heard.generated, "the stream began after the request was made"
        mp3 = first + await resp.read()

    stored = await other.app[STATION].store.request(body["request_id"])
    assert len(stored.chunks) == len(stored.sentences) == 3  # every chunk made (it may still be playing out)
    gap_ms = other.app[STATION].config.timeline.sentence_gap_ms
    whole_s = (sum(c.duration_ms for c in stored.chunks) + gap_ms * (len(stored.chunks) - 1)) / 1000
    assert abs(await decoded_seconds(mp3) - whole_s) < 0.15
    assert sent_bytes(owner, "progressive") == 0 and sent_bytes(other, "progressive") == len(mp3)
    assert other.app[CLUSTER].forwarder.forwarded == 0


async def test_a_progressive_stream_from_the_owner_plays_on_from_the_replica_after_a_handover(members):
    """The owner hands the channel over while its own progressive stream of the request is half made:
    the stream goes on with the chunks the new owner makes, heard through the replica, and ends with
    the request, every chunk and gap in it."""
    owner, other, token = members

    status, body = await post(owner, "table", token, TEXT)
    assert status == 202, body
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{owner.base_url}/api/audio/stream/{body['request_id']}") as resp,
    ):
        assert resp.status == 200
        first = await resp.content.readexactly(1000)
        made_here = len(owner.app[STATION].runners["table"].channel.find_request(body["request_id"]).chunks)
        owner.app[CLUSTER]._task.cancel()  # its ownership rounds stop: it will not take the channel back
        await owner.app[CLUSTER].ownership.let_go("table", "handed over by the test")
        assert await owner_of("table", other) is other
        async with asyncio.timeout(30):
            mp3 = first + await resp.read()

    assert made_here < 3, "the request was made before the handover"
    stored = await other.app[STATION].store.request(body["request_id"])
    assert len(stored.chunks) == len(stored.sentences) == 3
    gap_ms = other.app[STATION].config.timeline.sentence_gap_ms
    whole_s = (sum(c.duration_ms for c in stored.chunks) + gap_ms * (len(stored.chunks) - 1)) / 1000
    assert abs(await decoded_seconds(mp3) - whole_s) < 0.15
    assert sent_bytes(owner, "progressive") == len(mp3) and sent_bytes(other, "progressive") == 0
