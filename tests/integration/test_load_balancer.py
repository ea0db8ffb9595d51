"""A cluster behind a load balancer, as docs/deployment.md sets it up: Debian's haproxy running
docs/deploy/haproxy.cfg unchanged (only its address variables set), in front of two
`broadcaster serve --workers 1` processes on one PostgreSQL and one Redis, with no stickiness.

Everything goes through the balancer, so listeners land on both servers, and only one of them
runs the channel. haproxy runs in the foreground in the test's directory on a free loopback
port; its config needs no privileges. Without haproxy the tests skip, except in CI
(BROADCASTER_REQUIRE_BROWSER=1), where that is a failure.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import websockets
from postgres import require
from server_process import ServerProcess, cli, free_port, metric

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "haproxy.cfg"
# Stands in for the global section of Debian's /etc/haproxy/haproxy.cfg, which the guide keeps in
# front of the file above: here the log goes to the test's directory instead of the system's.
TEST_GLOBAL = "global\n    log stdout format raw local0\n"
LISTENERS = 6
LIVE_PLAYERS = 'channel="table",kind="live"'
ENDS = ("request_played", "request_failed", "request_cancelled")
START_TIMEOUT_S = 10


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        require("haproxy (Debian's haproxy package)")
    return found


class Balancer:
    """haproxy in the foreground, with the deployment guide's config and the test's addresses."""

    def __init__(self, directory: Path, servers: list[ServerProcess]):
        self.binary = haproxy_binary()
        self.directory = directory
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "haproxy.log"
        self.env = {
            **os.environ,
            "BROADCASTER_PUBLIC": f"127.0.0.1:{self.port}",
            **{f"BROADCASTER_APP{n}": server.base_url.removeprefix("http://") for n, server in enumerate(servers, 1)},
        }
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        """Start haproxy and return once it passes a request on to a server."""
        directory = self.directory
        (directory / "global.cfg").write_text(TEST_GLOBAL)
        command = [self.binary, "-db", "-f", str(directory / "global.cfg"), "-f", str(HAPROXY_CFG)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, env=self.env, cwd=directory, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"haproxy exited:\n{self.log_tail()}"
                try:
                    async with http.get(self.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"haproxy did not pass /healthz on:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def cluster_config(tmp_path: Path, database_url: str, redis_url: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(
        f"""
[server]
database_url = "{database_url}"
trusted_proxies = ["127.0.0.1"]  # the balancer: its X-Forwarded-For names the client (docs/deployment.md)
[cluster]
redis_url = "{redis_url}"
lease_s = 1
[tts]
engine = "tone"
tone_ms_per_char = 10
[timeline]
lead_ms = 300
sentence_gap_ms = 120
request_gap_ms = 200
[limits]
producer_write_burst = 100000
"""
    )
    return path


@pytest.fixture
async def cluster(tmp_path, postgres_url, redis_url):
    """Two servers with a channel, one of them running it, and the balancer in front of both;
    yields (balancer, servers, producer token)."""
    haproxy_binary()  # skip before starting anything
    config = cluster_config(tmp_path, postgres_url, redis_url)
    out = cli("channel", "create", "table", data_dir=tmp_path / "cli", config=config).stdout
    token = next(line.split()[-1] for line in out.splitlines() if "producer token" in line)
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        server = ServerProcess(tmp_path / name / "data", config, logs=tmp_path / name)
        server.args += ["--workers", "1"]
        servers.append(server)
    balancer = Balancer(tmp_path, servers)
    try:
        for server in servers:
            await server.start()
        await owner_of(servers)
        await balancer.start()
        yield balancer, servers, token
    finally:
        balancer.stop()
        for server in servers:
            server.stop()


async def health(base_url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(base_url + "/healthz") as resp:
        return await resp.json()


async def owner_of(servers: list[ServerProcess], timeout_s: float = 10) -> ServerProcess:
    """The server that runs the channel, once one does."""
    async with asyncio.timeout(timeout_s):
        while True:
            for server in servers:
                if server.proc.poll() is None and (await health(server.base_url))["channels"]:
                    return server
            await asyncio.sleep(0.05)


async def listen(base_url: str) -> websockets.ClientConnection:
    """A listener's WebSocket, past its snapshot."""
    ws = await websockets.connect("ws" + base_url.removeprefix("http") + "/ws/channels/table")
    assert json.loads(await ws.recv())["type"] == "snapshot"
    return ws


async def post(base_url: str, token: str, text: str, expect: int = 202, **headers: str) -> dict:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base_url}/api/channels/table/requests",
            json={"text": text},
            headers={"Authorization": f"Bearer {token}", **headers},
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == expect, body
        return body


async def heard(ws: websockets.ClientConnection, request_id: str, timeout_s: float = 20) -> list[dict]:
    """Every message up to the end of `request_id`, which must be `request_played`."""
    seen = [{}]
    async with asyncio.timeout(timeout_s):
        while seen[-1].get("request_id") != request_id or seen[-1]["type"] not in ENDS:
            seen.append(json.loads(await ws.recv()))
    assert seen[-1]["type"] == "request_played", seen[-1]
    return seen[1:]


async def get_bytes(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read()


async def listeners_on(server: ServerProcess) -> int:
    return int(await metric(server, "broadcaster_listeners", 'channel="table",kind="websocket"'))


def mp3_frames(data: bytes) -> int:
    """How many MPEG-1 Layer III frames follow one another from the first frame header in `data`."""
    bitrates_kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    rates = (44100, 48000, 32000)
    start = next((i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] & 0xFE == 0xFA), None)
    frames, at = 0, start
    while at is not None and at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] & 0xFE == 0xFA:
        bitrate, rate, padding = data[at + 2] >> 4, (data[at + 2] >> 2) & 3, (data[at + 2] >> 1) & 1
        if not 0 < bitrate < 15 or rate == 3:
            break
        frames += 1
        at += 144_000 * bitrates_kbps[bitrate] // rates[rate] + padding
    return frames


async def live_for(url: str, seconds: float) -> bytes:
    """What a player of live.mp3 receives in `seconds`."""
    received = bytearray()
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "audio/mpeg"
        deadline = asyncio.get_running_loop().time() + seconds
        with pytest.raises(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    received += await resp.content.readany()
    return bytes(received)


async def test_listeners_spread_over_both_servers_hear_one_timeline_and_any_server_serves_the_audio(cluster):
    """Through the balancer: listeners land on both servers, a narration posted there reaches each with the
    same chunks at the same times, a chunk's audio is the same from either server, and live.mp3 plays."""
    balancer, servers, token = cluster
    sockets = [await listen(balancer.base_url) for _ in range(LISTENERS)]
    try:
        counts = [await listeners_on(server) for server in servers]
        assert sum(counts) == LISTENERS and min(counts) > 0, f"listeners per server: {counts}"

        # A client claiming to be a server of the cluster is refused by any server, but the
        # balancer drops the claim before it gets there.
        forged = {"X-Broadcaster-Peer": "not-the-secret"}
        await post(servers[0].base_url, token, "Refused.", expect=403, **forged)
        request_id = (await post(balancer.base_url, token, "Everyone hears this. Together.", **forged))["request_id"]
        timelines = []
        for ws in sockets:
            timelines.append(
                [
                    (m["chunk_id"], m["starts_at_ms"], m["url"])
                    for m in await heard(ws, request_id)
                    if m["type"] == "audio_chunk_ready"
                ]
            )
        assert len(timelines[0]) == 2 and all(timeline == timelines[0] for timeline in timelines)

        url = timelines[0][0][2]
        status, through = await get_bytes(balancer.base_url + url)
        assert status == 200 and len(through) > 1000
        for server in servers:
            assert await get_bytes(server.base_url + url) == (200, through)

        # Two players at once: with the listeners split evenly, the balancer sends one to each server.
        played = await asyncio.gather(*(live_for(balancer.base_url + "/c/table/live.mp3", 1.0) for _ in servers))
        for audio in played:
            assert len(audio) > 8000 and mp3_frames(audio) > 10, f"{len(audio)} bytes, {mp3_frames(audio)} frames"
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_stopping_server_leaves_the_rotation_and_its_listeners_come_back_through_the_other(cluster):
    """When a server stops, its listeners are told to reconnect (1001) and reach the other through the
    balancer, which finds the stopped one down by its health check; the other runs the channel."""
    balancer, servers, token = cluster
    sockets = [await listen(balancer.base_url) for _ in range(LISTENERS)]
    stopping, staying = servers
    try:
        on_stopping = await listeners_on(stopping)
        assert on_stopping > 0
        stopping.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            while len(dropped := [ws.close_code for ws in sockets if ws.close_code is not None]) < on_stopping:
                await asyncio.sleep(0.05)
        assert dropped == [1001] * on_stopping, dropped
        await asyncio.to_thread(stopping.proc.wait, 30)

        sockets += [await listen(balancer.base_url) for _ in dropped]
        assert await listeners_on(staying) == LISTENERS
        assert await owner_of([staying], timeout_s=5) is staying
        request_id = (await post(balancer.base_url, token, "Still on the air."))["request_id"]
        for ws in sockets:
            if ws.close_code is None:
                await heard(ws, request_id)
        async with asyncio.timeout(10):
            while "is DOWN" not in balancer.log_tail():
                await asyncio.sleep(0.1)
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_stopping_server_is_not_held_up_by_a_live_mp3_player_the_balancer_sent_it(cluster):
    """A live.mp3 player keeps its response open for as long as it listens; once the health check finds
    a stopping server down, the balancer closes that player's connection (on-marked-down), so the
    server can finish stopping, while a player on the other server plays on."""
    balancer, servers, token = cluster
    owner = await owner_of(servers)
    # The one that does not run the channel: what is tested is the balancer's part, not a handover.
    stopping = next(server for server in servers if server is not owner)
    async with aiohttp.ClientSession() as http:
        url = balancer.base_url + "/c/table/live.mp3"
        # One after the other, so that the first is counted before the second is placed: requests that
        # reach haproxy together may be placed by two of its threads at once, both on the same server.
        players = []
        try:
            for _ in servers:
                players.append(await http.get(url))
                assert players[-1].status == 200 and len(await players[-1].content.readexactly(4000)) == 4000
            placed = [await metric(server, "broadcaster_listeners", LIVE_PLAYERS) for server in servers]
            assert placed == [1, 1], f"expected the balancer to send one player to each server, got {placed}"
            stopping.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(stopping.proc.wait, 20)
            ended = await asyncio.gather(*(_ended(player) for player in players))
            assert sorted(ended) == [False, True], "expected the player on the stopped server to be cut off, only"
        finally:
            for player in players:
                player.close()


async def _ended(player: aiohttp.ClientResponse) -> bool:
    """Whether the stream is over (its end reached, or its connection cut) rather than still playing."""
    try:
        async with asyncio.timeout(2):
            while await player.content.readany():
                pass
        return True
    except aiohttp.ClientPayloadError:
        return True
    except TimeoutError:
        return False


async def test_servers_count_the_client_the_balancer_names_not_the_balancer(cluster):
    """Through the balancer, a producer's write is logged and rate-limited under the address haproxy
    appended to X-Forwarded-For (here the test's own claim, since the test runs on the balancer's
    trusted loopback address)."""
    balancer, servers, token = cluster
    await post(balancer.base_url, token, "Who am I?", **{"X-Forwarded-For": "203.0.113.5"})
    logs = "".join(server.log_tail() for server in servers)
    assert "POST /api/channels/table/requests 202" in logs and "203.0.113.5" in logs
