"""The command line against a live server: say, and a headless listener writing what it heard."""

import asyncio
import json
import socket
import subprocess
import sys

import aiohttp
import pytest
import soundfile

from broadcaster.client import listen, submit
from broadcaster.runtime.accounts import create_channel
from web.keys import HUB, METRICS


async def listener_on(server, channel: str, timeout_s: float = 30) -> None:
    """Until the server counts a listener on `channel` (a client started beside the test has connected)."""
    async with asyncio.timeout(timeout_s):
        while server.app[HUB].total(channel) < 1:
            await asyncio.sleep(0.05)


async def test_listen_writes_what_it_heard_in_timeline_order(server, tmp_path):
    """`listen --out` follows the timeline and writes every chunk at its place, gaps included."""
    out = tmp_path / "heard.wav"
    listening = asyncio.create_task(listen(server.base_url, server.channel, out, max_requests=2, quiet=True))
    await listener_on(server, server.channel)
    await server.say("First words. More words.")
    await server.say("Second request.")
    heard = await asyncio.wait_for(listening, 30)
    timeline = heard.timeline()
    assert [c.text for c in timeline] == ["First words.", "More words.", "Second request."]
    samples, rate = soundfile.read(out, dtype="int16")
    last = timeline[-1]
    span_ms = last.starts_at_ms - timeline[0].starts_at_ms + len(last.pcm.samples) * 1000 / rate
    assert abs(len(samples) * 1000 / rate - span_ms) <= 1
    # each was announced while it listened, so its acknowledgement said when the audio was in hand
    assert all(c.live and c.ready_at_ms is not None and c.ready_at_ms < c.starts_at_ms for c in timeline)
    ready = server.app[METRICS].registry.get_sample_value("broadcaster_listener_ready_seconds_count")
    assert ready >= 1  # the first sentence went on the air at the lead


async def test_listen_writes_a_skipped_sentence_up_to_the_skip(server, tmp_path):
    """A sentence skipped while it sounded was heard up to the skip by every listener: `listen --out`
    writes that much of it (it once wrote nothing of it)."""
    out = tmp_path / "heard.wav"
    listening = asyncio.create_task(listen(server.base_url, server.channel, out, max_requests=1, quiet=True))
    await listener_on(server, server.channel)
    request_id = (await (await server.say("A long sentence that goes on and on, " * 4 + "and ends.")).json())[
        "request_id"
    ]
    station = server.station
    while (on_air := station.runners[server.channel].channel.now_playing()) is None or on_air.starts_at_ms is None:
        await asyncio.sleep(0.02)
    while station.clock() < on_air.starts_at_ms + 600:
        await asyncio.sleep(0.02)
    await server.control(f"requests/{request_id}/skip")
    heard = await asyncio.wait_for(listening, 30)
    (chunk,) = heard.timeline()
    assert chunk.until_ms is not None and 600 <= chunk.until_ms - chunk.starts_at_ms < chunk.duration_ms
    samples, rate = soundfile.read(out, dtype="int16")
    assert abs(len(samples) * 1000 / rate - (chunk.until_ms - chunk.starts_at_ms)) <= 1


async def test_listen_follows_a_private_channel_with_its_key(server, tmp_path):
    """`listen --key` hears a private channel (the key once went nowhere, and the server said 401)."""
    made = await create_channel(server.station.store, "secret", private=True)
    out = tmp_path / "heard.wav"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "broadcaster", "listen", "secret", "--key", made.listen_key, "--requests", "1"),
        *("--server", server.base_url, "--out", str(out), "--data-dir", str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    await listener_on(server, "secret")
    assert (await server.say("For the initiated only.", made.token, "secret")).status == 202
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "For the initiated only." in stdout.decode() and f"wrote what was heard to {out}" in stdout.decode()
    assert soundfile.info(out).frames > 0


async def test_say_command_puts_text_on_the_air(server):
    """`broadcaster say` submits narration with the producer token and prints the server's answer."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster",
        "say",
        server.channel,
        "Hello from the shell.",
        "--token",
        server.token,
        "--server",
        server.base_url,
        stdout=subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert json.loads(stdout)["status"] == "pending"


async def test_say_command_with_a_wrong_token_fails_clearly(server):
    """A wrong token makes `say` exit non-zero with the server's explanation."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster",
        "say",
        server.channel,
        "Nope.",
        "--token",
        "wrong",
        "--server",
        server.base_url,
        stdout=subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert json.loads(stdout)["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["say", "table", "Hello.", "--token", "t", "--server", "http://127.0.0.1:1"], "Cannot connect to host"),
        (["say", "table", "Hello.", "--token", "t", "--server", "ftp://example"], "ftp://example"),
        (["listen", "table", "--server", "http://127.0.0.1:1"], "Connect call failed"),
        (["serve", "--port", "-1"], "[server] port 0 or more and at most 65535, got -1"),
    ],
    ids=["say, nothing listening", "say, not http", "listen, nothing listening", "serve, port out of range"],
)
def test_what_goes_wrong_around_the_cli_is_one_line(tmp_path, args, words):
    """A server that is not there, a URL that is not HTTP, a port out of range: one line on stderr, no
    traceback, a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "broadcaster", *args, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert words in done.stderr and done.stderr.strip().splitlines()[-1].startswith("error: ")


async def test_listen_names_a_track_once_not_at_every_segment(server, tmp_path, monkeypatch, capsys):
    """A 12 s track is three 5 s segments: the headless listener prints its title once."""
    from media import tone

    (tmp_path / "music").mkdir()
    tone(tmp_path / "music" / "song.wav", 12, 300, tags={"title": "Song", "artist": "The Testers"})
    monkeypatch.chdir(tmp_path)
    listening = asyncio.create_task(listen(server.base_url, server.channel, max_requests=1))
    await asyncio.sleep(0.3)
    headers = {"Authorization": f"Bearer {server.token}"}
    async with aiohttp.ClientSession() as http:
        url = f"{server.base_url}/api/channels/{server.channel}/tracks"
        async with http.post(url, json={"path": "song.wav"}, headers=headers) as resp:
            assert resp.status == 202 and (await resp.json())["chunks"] == 3
    await asyncio.wait_for(listening, 40)
    printed = capsys.readouterr().out
    assert printed.count("\u25b6 Song") == 1, printed


def test_a_port_in_use_is_named_with_the_setting_it_comes_from(tmp_path):
    """Another program (or this server still running) on the port: the one line says which address and
    which setting, and the exit is 1 (a service manager may retry), not 2 (a bad config). It is said
    before anything starts: no voice loaded, no database made."""
    config = tmp_path / "config.toml"
    config.write_text('[tts]\nengine = "tone"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "broadcaster", "serve", "--config", str(config), "--port", str(port)]
            + ["--data-dir", str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{port} ([server] host and port, or --host and --port)" in last, last
    assert not (tmp_path / "data" / "broadcaster.db").exists() and "voice" not in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["channel", "list"], ["channel", "token", "lobby"], ["channel", "key", "lobby"]])
def test_channel_commands_on_a_data_dir_with_no_database_say_so_and_make_none(tmp_path, command):
    """A wrong --data-dir (or a relative one read from another directory) must not answer from a new,
    empty database; `channel create` may make one, and says it did."""
    stray = tmp_path / "stray"
    done = subprocess.run(
        [sys.executable, "-m", "broadcaster", *command, "--data-dir", str(stray)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "is --data-dir right?" in done.stderr, done.stderr[-2000:]
    assert not (stray / "broadcaster.db").exists()
    made = subprocess.run(
        [sys.executable, "-m", "broadcaster", "channel", "create", "lobby", "--data-dir", str(stray)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0 and "a new one is made there" in made.stderr
    again = subprocess.run(
        [sys.executable, "-m", "broadcaster", *command, "--data-dir", str(stray)], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-2000:]


async def test_listen_to_a_private_channel_without_its_key_says_what_to_pass(server, tmp_path):
    """A 401 to the socket was a bare 'InvalidStatus'; now the line says the channel is private and
    asks for --key. A trailing slash on --server is fine."""
    await create_channel(server.station.store, "hush", private=True)
    for channel, words in (("hush", "hush is private: pass its listen key with --key"), ("nowhere", "no channel")):
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "broadcaster", "listen", channel, "--seconds", "5"),
            *("--server", server.base_url + "/", "--data-dir", str(tmp_path)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2 and words in stderr.decode(), stderr.decode()[-2000:]


async def test_say_takes_a_server_address_with_a_trailing_slash(server):
    status, answer = await submit(server.base_url + "/", server.channel, "Hello.", server.token)
    assert status == 202 and answer["request_id"], answer
