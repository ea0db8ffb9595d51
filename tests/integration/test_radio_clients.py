"""live.mp3 against real radio clients: the Debian streamripper, and ffmpeg reading ICY titles.

streamripper needs a body framed as Icecast frames it (no chunked encoding), a title that changes
only at item boundaries, and "Artist - Title" with an ASCII hyphen to name its files. Without the
streamripper binary the ripper test skips locally; with BROADCASTER_REQUIRE_BROWSER=1 (CI) it fails.
"""

import asyncio
import os
import re
import shutil
from pathlib import Path

import aiohttp
import pytest
from conftest import start_server
from media import tone

from broadcaster.runtime.accounts import create_channel
from tts.encode import ffmpeg_exe
from web.keys import LIVE

TRACKS = (("Alpha Band", "First Song", 330), ("Beta Group", "Second Song", 550))
RADIO = {"timeline": {"lead_ms": 300, "sentence_gap_ms": 50, "request_gap_ms": 600}, "tts": {"tone_ms_per_char": 8}}


def make_track(directory: Path, artist: str, title: str, freq: int, seconds: float = 4) -> Path:
    """A short tagged stereo MP3 tone."""
    options = ("-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "96k")
    return tone(directory / f"{freq}.mp3", seconds, freq, *options, tags={"artist": artist, "title": title})


async def queue_track(base_url: str, channel: str, token: str, path: Path) -> dict:
    url = f"{base_url}/api/channels/{channel}/tracks?filename={path.name}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "audio/mpeg"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(url, data=path.read_bytes(), headers=headers) as resp,
    ):
        assert resp.status == 202, await resp.text()
        return await resp.json()


async def raw_get(
    base_url: str, path: str, headers: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, dict[str, str]]:
    """A GET over a plain socket: the status line and headers exactly as sent, and the reader for the body."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n".encode())
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    status, *lines = head.strip().split("\r\n")
    return reader, writer, status, {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


@pytest.mark.parametrize("connection", ["Connection: close\r\n", ""])
async def test_live_mp3_is_a_plain_body_ended_by_closing(server, connection):
    """live.mp3 is sent as Icecast sends it, to every HTTP/1.1 client: no chunked encoding, no length,
    `Connection: close`, so the first metadata block sits exactly `icy-metaint` bytes into the body."""
    reader, writer, status, headers = await raw_get(
        server.base_url, f"/c/{server.channel}/live.mp3", f"Icy-MetaData: 1\r\n{connection}"
    )
    try:
        assert status.endswith("200 OK")
        assert "transfer-encoding" not in headers and "content-length" not in headers
        assert headers["connection"].lower() == "close" and headers["icy-metaint"] == "16000"
        await asyncio.wait_for(reader.readexactly(16000), 10)
        units = (await reader.readexactly(1))[0]
        block = await reader.readexactly(units * 16)
        assert block.startswith(b"StreamTitle='table - Broadcaster';"), block[:60]
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.server_config(RADIO)
async def test_track_label_uses_an_ascii_hyphen(server, tmp_path):
    """A track with artist and title tags is labelled "Artist - Title" (what players split on), not with an en dash."""
    await queue_track(
        server.base_url, server.channel, server.token, make_track(tmp_path, "Alpha Band", "First Song", 330, 1)
    )
    _, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    texts = [item["text"] for item in [state["now_playing"], *state["queue"]] if item]
    assert texts == ["Alpha Band - First Song"]


async def players_connected(server, channel: str, count: int) -> None:
    async with asyncio.timeout(10):
        while (live := server.app[LIVE].streams.get(channel)) is None or len(live.listeners) < count:
            await asyncio.sleep(0.1)


def ripper() -> str:
    found = shutil.which("streamripper")
    if found is None:
        if os.environ.get("BROADCASTER_REQUIRE_BROWSER") == "1":
            pytest.fail("streamripper is required here (BROADCASTER_REQUIRE_BROWSER=1) but was not found")
        pytest.skip("no streamripper on this machine (apt-get install streamripper)")
    return found


async def test_streamripper_splits_two_tracks_and_ffmpeg_reads_their_titles(tmp_path):
    """The real streamripper records two queued tracks of a radio channel as two files named "Artist - Title",
    and ffmpeg (ICY metadata on) sees both titles; both clients stop by their own time limits (about 24 s)."""
    binary = ripper()
    tracks = [make_track(tmp_path, *track) for track in TRACKS]
    (tmp_path / "empty-music").mkdir()
    runner, server = await start_server(tmp_path, {**RADIO, "music": {"folder": str(tmp_path / "empty-music")}})
    rips, clients = tmp_path / "rips", []
    try:
        radio = await create_channel(server.station.store, "radio", style="radio")
        url = f"{server.base_url}/c/radio/live.mp3"
        clients.append(
            await asyncio.create_subprocess_exec(
                binary,
                url,
                "-d",
                str(rips),
                "-s",
                "-l",
                "24",
                "--xs_none",  # as README says
                "--codeset-metadata=UTF-8",
                "--quiet",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        )
        clients.append(
            await asyncio.create_subprocess_exec(
                ffmpeg_exe(),
                "-hide_banner",
                "-loglevel",
                "verbose",
                "-icy",
                "1",
                "-t",
                "20",
                "-i",
                url,
                "-f",
                "null",
                "-",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        )
        await players_connected(server, "radio", 2)
        await asyncio.sleep(1.5)  # the ripper hears the idle title first, so the first track is one it saw begin
        for path in tracks:
            await queue_track(server.base_url, "radio", radio.token, path)
        (ripped, _), (_, err) = [await asyncio.wait_for(client.communicate(), 40) for client in clients]
    finally:
        for client in clients:  # only if the test failed before they stopped by themselves
            if client.returncode is None:
                client.kill()
                await client.wait()
        await runner.cleanup()
    names = sorted(p.name for p in rips.glob("*.mp3"))
    assert names == ["Alpha Band - First Song.mp3", "Beta Group - Second Song.mp3"], (names, ripped.decode()[-2000:])
    assert all(p.stat().st_size > 30_000 for p in rips.glob("*.mp3"))  # about four seconds each at 128 kbit/s
    titles = re.findall(r"Metadata update for StreamTitle: (.*)", err.decode())
    assert "Alpha Band - First Song" in titles and "Beta Group - Second Song" in titles, titles
