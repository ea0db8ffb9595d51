"""The endless MP3 (/c/{channel}/live.mp3) against real players: the bundled ffmpeg."""

import asyncio
import re
import socket

import aiohttp
import pytest

from broadcaster.runtime import live as runtime_live
from tts.encode import ffmpeg_exe
from web.keys import LIVE


@pytest.mark.server_config({"tts": {"tone_ms_per_char": 45}})
async def test_ffmpeg_decodes_ten_seconds_and_sees_the_title_change(server):
    """A real ffmpeg client decodes 10 s of the live stream without error and sees StreamTitle change."""
    player = await asyncio.create_subprocess_exec(
        ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "verbose",
        "-t",
        "10",
        "-i",
        f"{server.base_url}/c/{server.channel}/live.mp3",
        "-f",
        "null",
        "-",
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(1.0)
    await server.say("The first item is on the air. It says two things.")
    await asyncio.sleep(3.0)
    await server.say("The second item has another title, and it goes on for a while.")
    _, err = await asyncio.wait_for(player.communicate(), 60)
    log = err.decode()
    assert player.returncode == 0, log[-2000:]
    decoded = re.search(r"(\d+) frames decoded; (\d+) decode errors", log)
    assert decoded and int(decoded.group(2)) == 0 and int(decoded.group(1)) >= 10 * 22050 // 1152
    titles = re.findall(r"Metadata update for StreamTitle: (.*)", log)
    assert "The first item is on the air. It says two things." in titles
    assert "The second item has another title, and it goes on for a while." in titles
    # ten seconds were decoded although the items cover only part of them: silence fills the rest


async def test_listeners_share_one_encoder_and_get_a_burst(server):
    """Two players of the same channel are fed by one encoder, and each starts with a burst of audio."""
    # A sweeping tone on the air: silence would encode to the same bytes block after block.
    sentence = "A sweeping tone that goes on for a while, so that no two seconds of the stream are alike. "
    assert (await server.say(sentence * 6)).status == 202
    async with aiohttp.ClientSession() as http:
        url = f"{server.base_url}/c/{server.channel}/live.mp3"
        async with http.get(url) as first:
            assert first.headers["Content-Type"] == "audio/mpeg" and first.headers["icy-br"] == "128"
            assert first.headers["ice-audio-info"] == "ice-samplerate=44100;ice-bitrate=128;ice-channels=2"
            heard = bytearray()
            reading = asyncio.create_task(_read_into(first, heard))
            await asyncio.sleep(1.5)  # let the stream build up its burst
            before = len(heard)
            async with http.get(url) as second:
                burst = await second.content.readexactly(6000)  # ~0.4 s of audio at 128 kbit/s
                streams = server.app[LIVE].streams
                assert list(streams) == [server.channel] and len(streams[server.channel].listeners) == 2
                async with asyncio.timeout(10):
                    while (at := heard.find(burst)) < 0:
                        await asyncio.sleep(0.05)
            reading.cancel()
    # The second player began with audio the first had heard before it came (the burst), not with
    # the next block written after it joined.
    assert at < before


async def test_the_player_that_starts_the_stream_gets_a_burst_too(server, monkeypatch):
    """The first player of a channel's stream gets a burst at once, as every later one does; it got
    audio only as fast as it played, a few hundred ms ahead, and underran (mpv said so). The stream's
    clock stands still here, so only what is rendered at once reaches the player."""
    now = server.station.clock()
    monkeypatch.setattr(server.app[LIVE], "clock", lambda: now)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/c/{server.channel}/live.mp3") as resp:
            heard = bytearray()
            reading = asyncio.create_task(_read_into(resp, heard))
            async with asyncio.timeout(10):
                while len(heard) < 32_000:  # two seconds of audio at 128 kbit/s
                    await asyncio.sleep(0.05)
            reading.cancel()


async def _read_into(response: aiohttp.ClientResponse, heard: bytearray) -> None:
    while data := await response.content.readany():
        heard += data


async def test_a_stalled_player_is_dropped_while_one_beside_it_keeps_playing(server, monkeypatch):
    """A player that stops reading is cut off once more than the bound waits for it (made 2 s of audio
    here); a player reading beside it gets a block every second all along, never waiting 2.5 s."""
    monkeypatch.setattr(runtime_live, "TRANSPORT_BYTES", 8000)
    host, port = server.base_url.removeprefix("http://").split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, filled at once
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(stalled, (host, int(port)))
    await loop.sock_sendall(stalled, f"GET /c/{server.channel}/live.mp3 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{server.base_url}/c/{server.channel}/live.mp3") as resp:
            live = await players_on(server, 2)
            live.behind_bytes = 32_000  # on loopback the kernel's send buffer would hide megabytes: capped
            async with asyncio.timeout(30):
                while live.dropped == 0:
                    await asyncio.wait_for(resp.content.readexactly(4000), 2.5)
            assert len(live.listeners) == 1
            for _ in range(4):  # and it goes on
                await asyncio.wait_for(resp.content.readexactly(4000), 2.5)
    finally:
        stalled.close()


async def players_on(server, count: int):
    async with asyncio.timeout(10):
        while (live := server.app[LIVE].streams.get(server.channel)) is None or len(live.listeners) < count:
            await asyncio.sleep(0.05)
    return live


async def test_a_stream_no_player_ever_joined_stops(server, monkeypatch):
    """A player that hangs up during its own request leaves a started stream without listeners: it
    stops once idle, as after its last player left."""
    monkeypatch.setattr(runtime_live, "IDLE_STOP_S", 0.4)
    live = await server.app[LIVE].stream(await server.station.runner(server.channel))
    assert live.running and not live.listeners
    for _ in range(50):
        if server.channel not in server.app[LIVE].streams:
            break
        await asyncio.sleep(0.1)
    assert server.channel not in server.app[LIVE].streams and not live.running


async def test_unknown_channel_live_stream_is_404(server):
    """A live stream of a channel that does not exist is a JSON 404."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/c/nowhere/live.mp3") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_a_stream_whose_encoder_died_is_stopped_before_the_next_player_gets_a_new_one(server):
    """The encoder of a channel's stream dies (killed): the next player gets a new stream, and the old one
    is stopped first, its render task and encoder with it, instead of being left running beside it."""
    streams = server.app[LIVE]
    runner = await server.station.runner(server.channel)
    old = await streams.stream(runner)
    old._encoder.proc.kill()
    async with asyncio.timeout(10):
        while old.running:
            await asyncio.sleep(0.05)
    new = await streams.stream(runner)
    assert new is not old and new.running
    assert not old._tasks and old.over  # stopped: no render task left writing to a dead encoder
    await streams.close()
