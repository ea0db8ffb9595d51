"""Cluster mode as operators run it: real `broadcaster serve` processes on one PostgreSQL and one Redis.

Killed, stopped and restarted for real (SIGKILL, SIGSTOP), with real WebSocket listeners."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import websockets
from server_process import ServerProcess, cli

LEASE_S = 1


def cluster_config(tmp_path: Path, database_url: str, redis_url: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(
        f"""
[server]
database_url = "{database_url}"
[cluster]
redis_url = "{redis_url}"
lease_s = {LEASE_S}
[tts]
engine = "tone"
tone_ms_per_char = 10
[timeline]
lead_ms = 300
sentence_gap_ms = 120
request_gap_ms = 200
[limits]
producer_write_burst = 100000
max_connections_per_address = 0
connects_per_second = 0
"""
    )
    return path


async def health(base_url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(base_url + "/healthz") as resp:
            return await resp.json()


async def post(base_url: str, token: str, text: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url}/api/channels/table/requests", json={"text": text}, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, await resp.json()


def ws_url(base_url: str) -> str:
    return "ws" + base_url.removeprefix("http") + "/ws/channels/table"


async def running(server: ServerProcess, timeout_s: float = 8) -> bool:
    """Whether the server runs the channel, waiting up to `timeout_s` for it to."""
    async with asyncio.timeout(timeout_s):
        while (await health(server.base_url))["channels"] == 0:
            await asyncio.sleep(0.1)
    return True


async def messages_until(ws, request_id: str, timeout_s: float = 20) -> list[dict]:
    """Every message up to the end (played, failed or cancelled) of `request_id`."""
    seen = []
    async with asyncio.timeout(timeout_s):
        while True:
            message = json.loads(await ws.recv())
            seen.append(message)
            if message.get("request_id") == request_id and message["type"] in (
                "request_played",
                "request_failed",
                "request_cancelled",
            ):
                return seen


@pytest.fixture
def servers(tmp_path, postgres_url, redis_url):
    config = cluster_config(tmp_path, postgres_url, redis_url)
    made = []

    def start(name: str) -> ServerProcess:
        data = tmp_path / name / "data"
        data.mkdir(parents=True)
        server = ServerProcess(data, config, logs=tmp_path / name)
        server.args += ["--workers", "1"]  # one process each, to kill or stop (the default is one per core)
        made.append(server)
        return server

    def token() -> str:
        out = cli("channel", "create", "table", data_dir=tmp_path / "cli", config=config).stdout
        return next(line.split()[-1] for line in out.splitlines() if "producer token" in line)

    yield start, token
    for server in made:
        if server.proc and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


async def test_a_killed_owner_is_replaced_and_listeners_elsewhere_hear_what_was_queued(servers):
    start, token = servers
    producer_token = token()
    a, b = start("a"), start("b")
    await a.start()
    assert await running(a)
    await b.start()
    async with websockets.connect(ws_url(b.base_url)) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        status, first = await post(b.base_url, producer_token, "The first request plays for a while. " * 3)
        assert status == 202, first
        status, second = await post(b.base_url, producer_token, "The second one waits.")
        assert status == 202, second
        async with asyncio.timeout(10):
            while json.loads(await ws.recv()).get("type") != "audio_chunk_ready":
                pass
        a.kill()
        heard = await messages_until(ws, second["request_id"])
    assert heard[-1]["type"] == "request_played"
    assert await running(b, timeout_s=1)


async def test_an_owner_stopped_past_its_lease_is_fenced_off_and_steps_down_when_it_wakes(servers):
    start, token = servers
    producer_token = token()
    a, b = start("a"), start("b")
    await a.start()
    assert await running(a)
    await b.start()
    async with websockets.connect(ws_url(b.base_url)) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        status, first = await post(a.base_url, producer_token, "Something long enough to be mid-air. " * 4)
        assert status == 202, first
        os.kill(a.proc.pid, signal.SIGSTOP)
        assert await running(b, timeout_s=LEASE_S * 6)  # B takes over once A's lease lapses
        status, second = await post(b.base_url, producer_token, "Said after the takeover.")
        assert status == 202, second
        os.kill(a.proc.pid, signal.SIGCONT)
        heard = await messages_until(ws, second["request_id"], timeout_s=30)
    assert heard[-1]["type"] == "request_played"
    starts = [(m["starts_at_ms"], m["duration_ms"]) for m in heard if m["type"] == "audio_chunk_ready"]
    for (start_ms, duration_ms), (next_ms, _) in zip(starts, starts[1:]):
        assert next_ms >= start_ms + duration_ms, "two chunks overlap: two owners announced at once"
    await asyncio.sleep(LEASE_S * 2)
    assert (await health(a.base_url))["channels"] == 0, "the stopped owner still runs the channel after waking"
    assert (await health(b.base_url))["channels"] == 1
    assert "refused" in a.log_tail() or "handed over" in a.log_tail() or "no longer running" in a.log_tail()


async def test_workers_share_one_port_and_a_narration_reaches_listeners_of_every_worker(
    tmp_path, postgres_url, redis_url
):
    config = cluster_config(tmp_path, postgres_url, redis_url)
    server = ServerProcess(tmp_path / "data", config)
    internal = free_port_pair(avoid=server.port)
    config.write_text(config.read_text().replace("[cluster]\n", f"[cluster]\ninternal_port = {internal}\n"))
    out = cli("channel", "create", "table", data_dir=tmp_path / "data", config=config).stdout
    producer_token = next(line.split()[-1] for line in out.splitlines() if "producer token" in line)
    server.args += ["--workers", "2"]
    await server.start()
    try:
        pids = set()
        async with asyncio.timeout(30):  # the first worker up answers before the second has started
            while len(pids) < 2:
                async with aiohttp.ClientSession() as http:  # a new connection each time: any worker may take it
                    async with http.get(server.base_url + "/healthz") as resp:
                        pids.add((await resp.json())["process"])
        sockets = [await websockets.connect(ws_url(server.base_url)) for _ in range(8)]
        for ws in sockets:
            assert json.loads(await ws.recv())["type"] == "snapshot"
        status, body = await post(server.base_url, producer_token, "Everyone hears this. Together.")
        assert status == 202, body
        timelines = []
        for ws in sockets:
            heard = await messages_until(ws, body["request_id"])
            timelines.append([(m["chunk_id"], m["starts_at_ms"]) for m in heard if m["type"] == "audio_chunk_ready"])
            await ws.close()
        assert len(timelines[0]) == 2 and all(t == timelines[0] for t in timelines)
        # a fixed internal port: one per worker, where each can be scraped on its own
        assert {(await health(f"http://127.0.0.1:{internal + n}"))["process"] for n in range(2)} == pids
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "broadcaster",
                "db",
                "upgrade",
                "--config",
                str(config),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and "2 servers" in refused.stderr, refused.stderr
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log_tail()


def free_port_pair(avoid: int) -> int:
    """A port p such that p and p + 1 are free now and neither is `avoid`: below the ephemeral range,
    as docs/deployment.md advises, where no outgoing connection (the test's, a worker's to PostgreSQL)
    can take one before the worker binds it."""
    import random
    import socket

    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        base = random.randrange(max(1024, lowest_ephemeral - 8000), lowest_ephemeral - 1)
        if avoid in (base, base + 1):
            continue
        try:
            for port in (base, base + 1):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


def test_workers_without_cluster_mode_are_refused_with_the_reason(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "broadcaster", "serve", "--data-dir", str(tmp_path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "redis_url" in result.stderr and "PostgreSQL" in result.stderr


KILLS = 20


async def owner_among(servers: list[ServerProcess], timeout_s: float = 10) -> ServerProcess:
    async with asyncio.timeout(timeout_s):
        while True:
            for server in servers:
                if server.proc.poll() is None:
                    try:
                        if (await health(server.base_url))["channels"]:
                            return server
                    except aiohttp.ClientError:
                        pass
            await asyncio.sleep(0.05)


async def post_somewhere(servers: list[ServerProcess], token: str, text: str) -> str:
    """Post to any live server, retrying through a takeover as a client would (503, a refused connection)."""
    for attempt in range(100):
        server = servers[attempt % len(servers)]
        if server.proc.poll() is None:
            try:
                status, body = await post(server.base_url, token, text)
                if status == 202:
                    return body["request_id"]
                assert status == 503, body
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"no server took {text!r}")


async def test_owners_killed_at_random_moments_never_overlap_lose_or_repeat_anything(servers, postgres_url):
    import random

    import asyncpg

    start, token = servers
    producer_token = token()
    members = [start(name) for name in "abc"]
    for member in members:
        await member.start()
    rng = random.Random(19)
    posted: list[str] = []
    listeners = [Roaming(members, first=n) for n in range(len(members))]  # one on each, moving when it dies
    for kill in range(KILLS):
        posted.append(await post_somewhere(members, producer_token, f"Request {kill}. It has two sentences."))
        owner = await owner_among(members)
        await asyncio.sleep(rng.uniform(0.05, 1.2))  # mid-synthesis, mid-chunk, between requests...
        owner.kill()
        await owner.start()  # back as a member; someone else runs the channel meanwhile
    await owner_among(members)

    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with asyncio.timeout(60):
            while await conn.fetchval(
                "SELECT count(*) FROM playback_requests WHERE state NOT IN ('played', 'failed', 'cancelled')"
            ):
                await asyncio.sleep(0.2)
        states = dict(await conn.fetch("SELECT id, state FROM playback_requests"))
        chunks = await conn.fetch(
            "SELECT id, request_id, seq, starts_at_ms, duration_ms FROM audio_chunks "
            "WHERE starts_at_ms IS NOT NULL AND state <> 'discarded' ORDER BY starts_at_ms"
        )
    finally:
        await conn.close()
    assert set(posted) <= set(states), "a request the server accepted is gone"
    assert all(states[r] == "played" for r in posted), {r: states[r] for r in posted if states[r] != "played"}
    assert len({(c["request_id"], c["seq"]) for c in chunks}) == len(chunks) >= 2 * KILLS
    for earlier, later in zip(chunks, chunks[1:]):
        assert later["starts_at_ms"] >= earlier["starts_at_ms"] + earlier["duration_ms"], (earlier, later)
    epochs = []
    for member in members:
        for n in range(1, member.starts + 1):
            log = (member.logs / f"server-{n}.log").read_text(errors="replace")
            epochs += [
                int(line.rsplit("epoch ", 1)[1].rstrip(")"))
                for line in log.splitlines()
                if "running channel table (epoch" in line
            ]
    assert len(epochs) == len(set(epochs)), f"one epoch was taken twice: {sorted(epochs)}"
    assert len(epochs) > KILLS
    placed = {c["id"]: c["starts_at_ms"] for c in chunks}
    for listener in listeners:
        await listener.stop()
        assert listener.joins > 1, "a listener never had to move"
        assert set(posted) <= listener.played, "a listener did not hear every request end"
        moved = {cid: (at, placed.get(cid)) for cid, at in listener.starts.items() if placed.get(cid) != at}
        assert not moved, f"listeners were told other times than the timeline kept: {moved}"


class Roaming:
    """A listener that reconnects to the next live server when its own dies, as behind a load balancer."""

    def __init__(self, members: list[ServerProcess], first: int):
        self.members, self.index = members, first
        self.joins = 0
        self.played: set[str] = set()
        self.starts: dict[str, int] = {}  # chunk id -> the start it was last told
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            member = self.members[self.index % len(self.members)]
            try:
                async with websockets.connect(ws_url(member.base_url)) as ws:
                    self.joins += 1  # not every snapshot: a takeover resynchronises listeners that stay
                    async for text in ws:
                        self._take(json.loads(text))
            except (OSError, websockets.ConnectionClosed, websockets.InvalidStatus):
                pass
            self.index += 1
            await asyncio.sleep(0.05)

    def _take(self, message: dict) -> None:
        kind = message["type"]
        if kind == "snapshot":
            self.played |= {r["request_id"] for r in message["recent"] if r["status"] == "played"}
            for chunk in (message["now_playing"] or {}).get("chunks", []):
                self.starts[chunk["chunk_id"]] = chunk["starts_at_ms"]
        elif kind in ("audio_chunk_ready", "timeline_shifted"):
            self.starts[message["chunk_id"]] = message["starts_at_ms"]
        elif kind == "request_played":
            self.played.add(message["request_id"])
        elif kind == "playback_queue_updated":
            self.played |= {r["request_id"] for r in message["recent"] if r["status"] == "played"}

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
