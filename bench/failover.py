"""Failover: from the death of a channel's owner to the next chunk its successor announces, and the gap heard.

Starts a real PostgreSQL and Redis (as the tests do) and three `broadcaster serve --workers 1`
processes in cluster mode on them, keeps one channel narrating (long narrations posted ahead),
and follows it with a WebSocket listener on a process that is never the one killed. Then, again
and again, at a random moment it kills the process that runs the channel and starts it again:

- `--how kill` (SIGKILL): a crash. On one machine the successor sees at once that the holder's
  process is gone and takes the channel in its next round (a third of the lease).
- `--how stop` (SIGSTOP, then SIGKILL once replaced): a process that stopped answering, as a
  machine that fell off the network would look. The successor waits for the lease to lapse.

For each kill it reports: how long until the listener got the next `audio_chunk_ready` (the new
owner's first announcement), how much audio had been announced ahead of the kill, and the gap
on the timeline where the owners changed: from the end of the last chunk announced before the
kill to the start of the first one placed after it. A listener hears it as silence; one of the
configured gaps (between sentences or requests) is inaudible, anything longer is not.

    .venv/bin/python bench/failover.py [--kills 10] [--how kill|stop] [--engine piper|tone] [--lease-s 3]
                                       [--repeat-text 1] [--when any|making]
"""

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import websockets
from report import percentile, table
from serverproc import free_port, toml_text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from postgres import PostgresServer, binaries  # noqa: E402
from redis_server import RedisServer, redis_binary  # noqa: E402

TEXT = (
    "The caravan reached the river at dusk, and the ferryman would not cross until morning. "
    "Rain drummed on the tarpaulins while the mules complained. Somewhere upstream a bell rang twice. "
    "Nobody in the camp admitted to having heard it, but nobody slept either. "
)


class Member:
    def __init__(self, name: str, config: Path, work: Path):
        self.name, self.config, self.work = name, config, work
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        data = self.work / self.name
        data.mkdir(exist_ok=True)
        log = (self.work / f"{self.name}.log").open("ab")
        command = [sys.executable, "-m", "broadcaster", "serve", "--workers", "1", "--port", str(self.port)]
        command += ["--config", str(self.config), "--data-dir", str(data)]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        async with asyncio.timeout(120):
            while (await self.health()) is None:
                assert self.proc.poll() is None, f"{self.name} exited at start; see {self.work}/{self.name}.log"
                await asyncio.sleep(0.1)

    async def health(self) -> dict | None:
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    return await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Timeline:
    """What a listener was told: every chunk's place, and when each announcement arrived."""

    def __init__(self):
        self.chunks: dict[str, tuple[int, int]] = {}  # chunk id -> (starts_at_ms, duration_ms)
        self.request_of: dict[str, str] = {}  # chunk id -> its request's id
        self.requests: set[str] = set()  # every request seen, on the air or queued
        self.arrivals: list[tuple[float, str]] = []  # (received at, wall clock ms; chunk id)

    def take(self, message: dict) -> None:
        if message["type"] == "audio_chunk_ready":
            self.chunks[message["chunk_id"]] = (message["starts_at_ms"], message["duration_ms"])
            self.request_of[message["chunk_id"]] = message["request_id"]
            self.requests.add(message["request_id"])
            self.arrivals.append((time.time() * 1000, message["chunk_id"]))
        elif message["type"] == "timeline_shifted":
            _, duration = self.chunks.get(message["chunk_id"], (0, 0))
            self.chunks[message["chunk_id"]] = (message["starts_at_ms"], duration)
        elif message["type"] in ("snapshot", "playback_queue_updated"):
            playing = message.get("now_playing") or {}
            self.requests.update(item["request_id"] for item in [playing, *message.get("queue", [])] if item)
            for chunk in playing.get("chunks", []):
                self.chunks[chunk["chunk_id"]] = (chunk["starts_at_ms"], chunk["duration_ms"])
                self.request_of[chunk["chunk_id"]] = playing["request_id"]

    async def while_making(self, timeout_s: float = 180) -> None:
        """Until a chunk was announced within the last 300 ms: its request is still being made."""
        async with asyncio.timeout(timeout_s):
            while not self.arrivals or self.arrivals[-1][0] < time.time() * 1000 - 300:
                await asyncio.sleep(0.01)

    def announced_end(self) -> int:
        return max((start + duration for start, duration in self.chunks.values()), default=0)

    def handover_gap(self, before: set[str], known: set[str]) -> int | None:
        """The silence on the timeline from the end of the last of the chunks `before` (those announced
        before the kill, by the old owner) to the first chunk placed after it (by the new owner). None
        when that chunk's request was posted after the kill (`known`: the requests seen before it): the
        old owner had announced all it had, and the silence until the next post is no handover's."""
        old_end = max(
            (start + duration for chunk, (start, duration) in self.chunks.items() if chunk in before), default=None
        )
        later = sorted((start, chunk) for chunk, (start, _) in self.chunks.items() if chunk not in before)
        if old_end is None or not later or self.request_of.get(later[0][1]) not in known:
            return None
        return later[0][0] - old_end


async def follow(member: Member, timeline: Timeline) -> None:
    while True:
        try:
            async with websockets.connect(member.url.replace("http", "ws") + "/ws/channels/table") as ws:
                async for text in ws:
                    timeline.take(json.loads(text))
        except (OSError, websockets.ConnectionClosed):
            await asyncio.sleep(0.2)


async def keep_narrating(members: list[Member], token: str, text: str, live: bool) -> None:
    """Post a narration whenever fewer than two wait, to whichever member answers. `live`: only when
    the channel is silent, so each narration goes on the air as it is made (a queued one is made
    ahead, whole, before its turn)."""
    while True:
        for member in members:
            try:
                async with aiohttp.ClientSession() as http:
                    headers = {"Authorization": f"Bearer {token}"}
                    async with http.get(f"{member.url}/api/channels/table/audio/queue", headers=headers) as resp:
                        state = await resp.json() if resp.status == 200 else {"queue": [None] * 2}
                    silent = not state["queue"] and state.get("now_playing") is None
                    if silent if live else len(state["queue"]) < 2:
                        url = f"{member.url}/api/channels/table/requests"
                        async with http.post(url, json={"text": text}, headers=headers) as posted:
                            await posted.read()
                break
            except aiohttp.ClientError:
                continue
        await asyncio.sleep(1)


async def owner(members: list[Member], timeout_s: float = 30) -> Member:
    async with asyncio.timeout(timeout_s):
        while True:
            for member in members:
                health = await member.health()
                if health and health["channels"]:
                    return member
            await asyncio.sleep(0.05)


async def one_kill(members: list[Member], timelines: dict[str, Timeline], how: str, rng, making: bool) -> dict:
    """Kill (or stop) whoever runs the channel; a listener on another member measures. `making`: wait
    for a moment when the owner is announcing chunks as it makes them (within a request)."""
    await asyncio.sleep(rng.uniform(0.5, 4))
    victim = await owner(members)
    timeline = timelines[next(m.name for m in members if m is not victim)]
    if making:
        await timeline.while_making()
    if not (await victim.health() or {}).get("channels"):
        return {}
    ahead_ms = timeline.announced_end() - time.time() * 1000
    before, known = set(timeline.chunks), set(timeline.requests)
    killed_at = time.time() * 1000
    os.kill(victim.proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    if how == "kill":
        victim.proc.wait()  # reaped, as a supervisor or systemd would (a zombie still looks alive)
    seen = len(timeline.arrivals)
    await owner([m for m in members if m is not victim])
    taken_at = time.time() * 1000
    async with asyncio.timeout(ahead_ms / 1000 + 60):  # the next chunk may be due only once the announced audio ends
        while not any(at >= killed_at + 20 for at, _ in timeline.arrivals[seen:]):
            await asyncio.sleep(0.01)
    first = next(at for at, _ in timeline.arrivals[seen:] if at >= killed_at + 20)
    if how == "stop":
        os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    await asyncio.sleep(1)  # let the timeline settle before reading the gap
    gap_ms = timeline.handover_gap(before, known)
    await victim.start()
    return {
        "takeover_ms": taken_at - killed_at,
        "failover_ms": first - killed_at,
        "ahead_ms": ahead_ms,
        "gap_ms": gap_ms,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--how", choices=("kill", "stop"), default="kill")
    parser.add_argument("--engine", choices=("piper", "tone"), default="piper")
    parser.add_argument("--lease-s", type=float, default=3)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument(
        "--when",
        choices=("any", "making"),
        default="any",
        help="'making': narrations go on the air as they are made (posted only to a silent channel), and "
        "the owner is killed only while it announces chunks as it makes them, so the owners change within a "
        "request (with --repeat-text 4 or more, to leave time to catch it)",
    )
    parser.add_argument(
        "--repeat-text",
        type=int,
        default=1,
        help="each narration is the text this many times (4 sentences each): long ones are still being "
        "made when an owner dies, so owners change within a request, not only between requests",
    )
    args = parser.parse_args()
    if binaries() is None or redis_binary() is None:
        raise SystemExit("needs PostgreSQL and redis-server (apt-get install postgresql redis-server)")
    work = Path(tempfile.mkdtemp(prefix="broadcaster-failover-"))
    postgres, redis_ = PostgresServer(binaries()), RedisServer(redis_binary(), work / "redis")
    postgres.start()
    redis_.start()
    members: list[Member] = []
    tasks: list[asyncio.Task] = []
    try:
        database = await postgres.create_database()
        settings = {
            "server": {"database_url": postgres.url(database)},
            "cluster": {"redis_url": redis_.url, "lease_s": args.lease_s},
            "tts": {"engine": args.engine, "tone_delay_ms": 150},
            "limits": {"producer_write_burst": 10_000, "max_connections_per_address": 0, "connects_per_second": 0},
        }
        config = work / "cluster.toml"
        config.write_text(toml_text(settings))
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "broadcaster",
                "channel",
                "create",
                "table",
                "--json",
                "--config",
                str(config),
                "--data-dir",
                str(work / "cli"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        token = json.loads(created.stdout)["producer_token"]
        members = [Member(name, config, work) for name in ("a", "b", "c")]
        for member in members:
            await member.start()
        await owner(members)
        timelines = {member.name: Timeline() for member in members}  # a listener on each member
        tasks = [asyncio.create_task(follow(m, timelines[m.name])) for m in members]
        tasks.append(
            asyncio.create_task(keep_narrating(members, token, TEXT * args.repeat_text, args.when == "making"))
        )
        await asyncio.sleep(5)  # narration under way, audio announced ahead
        rng, results = random.Random(args.seed), []
        for n in range(args.kills):
            result = await one_kill(members, timelines, args.how, rng, args.when == "making")
            if result:
                results.append(result)
                print(
                    f"kill {n + 1}: taken over in {result['takeover_ms']:.0f} ms, "
                    f"{result['failover_ms']:.0f} ms to the next announcement, "
                    f"{result['ahead_ms']:.0f} ms announced ahead, gap {result['gap_ms']} ms",
                    flush=True,
                )
        report(results, args)
    finally:
        for task in tasks:
            task.cancel()
        for member in members:
            member.stop()
        redis_.stop()
        postgres.close()


def report(results: list[dict], args: argparse.Namespace) -> None:
    failover = [r["failover_ms"] for r in results]
    gaps = [r["gap_ms"] for r in results if r["gap_ms"] is not None]
    print(
        f"\n{len(results)} owners {'killed' if args.how == 'kill' else 'stopped'}, lease {args.lease_s} s, "
        f"engine {args.engine}"
    )
    print(
        table(
            ["", "min", "p50", "max"],
            [
                spread("kill to a new owner running it (ms)", [r["takeover_ms"] for r in results]),
                spread("kill to next announcement (ms)", failover),
                spread("audio announced ahead at the kill (ms)", [r["ahead_ms"] for r in results]),
                spread(f"timeline gap where owners changed (ms, {len(gaps)} found)", gaps),
            ],
        )
    )
    print(f"handover gaps: {sorted(gaps)}")
    covered = [r for r in results if r["ahead_ms"] >= r["takeover_ms"]]
    print(f"kills with more audio announced ahead than the takeover took: {len(covered)}/{len(results)}")
    print("configured gaps: 250 ms between sentences, 600 ms between requests (a gap of one of those is inaudible)")


def spread(label: str, values: list[float]) -> list[str]:
    if not values:
        return [label, "-", "-", "-"]
    return [label, f"{min(values):.0f}", f"{percentile(values, 50):.0f}", f"{max(values):.0f}"]


if __name__ == "__main__":
    asyncio.run(main())
