"""Soak: 500 listeners and a producer for half an hour; does the server's memory stay flat?

Starts the real server as its own process (tone engine by default, or Piper
with --engine piper; a temporary data dir; per-address caps off) and keeps it
busy for --minutes: browser-like listeners from worker processes (clock
samples, every chunk's MP3 fetched, `audio_played` sent when a chunk has
played; see bench/listeners.py) that leave and come back at random (churn),
a producer POSTing a paragraph of narration every --submit-every seconds,
and a few live.mp3 players that reconnect now and then. It samples the
server's VmRSS, VmHWM, its children's RSS, threads and open files every
--sample-s seconds, with the memory its C allocator has handed out (live
memory: Python's arenas, SQLite, buffers) and holds free, prints the series,
and judges the trend: RSS at minute ~5 against the end, and the
least-squares slope (MB/hour) over the second half. "Flat" means the second
half's fitted growth is within the noise (twice the residual spread, at
least 1 MB). RSS that grows while the memory in use stays flat is a
fragmented heap, not a leak. It also prints the cycle collector's pauses
by generation while the listeners were connected (each stops the server):
how often they come depends on what listeners send (`--clock-every-s`).

    .venv/bin/python bench/soak.py [--minutes 30] [--listeners 500] [--engine tone|piper]
"""

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from listeners import Behaviour, ListenerWorker, merge_reports
from report import least_squares, percentile, table
from serverproc import (
    Histogram,
    MemorySample,
    MemorySampler,
    ServerProcess,
    cpu_seconds,
    listener_count,
    profile_summary,
    raise_nofile,
    scrape_gauges,
    scrape_histogram,
    tcp_counters,
    tcp_summary,
    with_uncapped_limits,
)
from texts import PARAGRAPHS
from workers import WorkerPool, split

CHANNEL = "bench"
EARLY_S = 300  # "minute ~5": after start-up and the first churn, before any slow leak shows
CACHE, HEAP = "broadcaster_chunk_cache_bytes", "broadcaster_python_heap_blocks"
SQLITE = "broadcaster_sqlite_memory_bytes"
IN_USE, FREE = "broadcaster_malloc_in_use_bytes", "broadcaster_malloc_free_bytes"
PAUSES = "broadcaster_gc_pause_seconds"


@dataclass
class Point:
    """One sample of the run: the server's memory as the OS and as the server itself sees it."""

    memory: MemorySample
    listening: int
    data_mb: float
    cpu: float  # server, share of one core since the previous sample
    client_cpu: float
    cache_mb: float  # chunk audio cached for fetches: bounded by [server] chunk_cache_mb
    heap_kblocks: float  # Python's allocated blocks, in thousands: grows with any leak of Python objects
    sqlite_mb: float  # SQLite's page caches and statements, by its own count
    in_use_mb: float  # the C allocator's memory handed out: live memory, Python's arenas included
    free_mb: float  # free memory the C allocator holds: resident, reusable

    @property
    def in_use_less_cache_mb(self) -> float:
        return self.in_use_mb - self.cache_mb

    @property
    def rss_less_cache_mb(self) -> float:
        return self.memory.rss_mb - self.cache_mb


class Producer:
    """POSTs a paragraph every so often, unless a few are already waiting (Piper may fall behind)."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str, every_s: float):
        self.http, self.base_url, self.token, self.every_s = http, base_url, token, every_s
        self.counts: Counter = Counter()

    async def run(self) -> None:
        turn = 0
        while True:
            async with self.http.get(f"{self.base_url}/api/channels/{CHANNEL}/audio/queue") as resp:
                waiting = len((await resp.json())["queue"])
            if waiting < 3:
                await self._post(PARAGRAPHS[turn % len(PARAGRAPHS)])
                turn += 1
            else:
                self.counts["skipped: queue busy"] += 1
            await asyncio.sleep(self.every_s * random.uniform(0.7, 1.3))

    async def _post(self, text: str) -> None:
        try:
            async with self.http.post(
                f"{self.base_url}/api/channels/{CHANNEL}/requests",
                json={"text": text},
                headers={"Authorization": f"Bearer {self.token}"},
            ) as resp:
                self.counts[f"POST {resp.status}"] += 1
        except aiohttp.ClientError as exc:
            self.counts[f"POST failed: {type(exc).__name__}"] += 1


async def live_player(http: aiohttp.ClientSession, base_url: str, counts: Counter) -> None:
    """A radio player on live.mp3 that hangs up after a few minutes and tunes in again."""
    while True:
        stay_s = random.uniform(60, 240)
        started = time.monotonic()
        try:
            async with http.get(f"{base_url}/c/{CHANNEL}/live.mp3") as resp:
                counts[f"live {resp.status}"] += 1
                while time.monotonic() - started < stay_s:
                    data = await resp.content.readany()
                    if not data:
                        counts["live ended by server"] += 1
                        break
                    counts["live bytes"] += len(data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            counts[f"live failed: {type(exc).__name__}"] += 1
        await asyncio.sleep(random.uniform(1, 5))


def clients_cpu(pool: WorkerPool) -> float:
    return cpu_seconds(os.getpid()) + sum(cpu_seconds(proc.pid) for proc in pool.procs)


async def sample_loop(
    server: ServerProcess,
    pool: WorkerPool,
    sampler: MemorySampler,
    http: aiohttp.ClientSession,
    series: list[Point],
    seconds: float,
) -> None:
    """Every interval: memory, open listeners, data size, CPU since the last sample; printed as it goes."""
    last = (cpu_seconds(server.pid), clients_cpu(pool), time.monotonic())
    while True:
        sample = await asyncio.to_thread(sampler.sample)
        listening = await listener_count(http, server.base_url, CHANNEL)
        gauges = await scrape_gauges(http, server.base_url, [CACHE, HEAP, SQLITE, IN_USE, FREE])
        data_mb = await asyncio.to_thread(server.data_bytes) / 1e6
        now = (cpu_seconds(server.pid), clients_cpu(pool), time.monotonic())
        wall = max(now[2] - last[2], 1e-6)
        cpu, client_cpu, last = (now[0] - last[0]) / wall, (now[1] - last[1]) / wall, now
        point = Point(
            sample,
            listening,
            data_mb,
            cpu,
            client_cpu,
            gauges[CACHE] / 2**20,
            gauges[HEAP] / 1000,
            gauges[SQLITE] / 2**20,
            gauges[IN_USE] / 2**20,
            gauges[FREE] / 2**20,
        )
        series.append(point)
        print(
            f"  {sample.at_s / 60:5.1f} min  RSS {sample.rss_mb:6.1f} MB  cache {point.cache_mb:5.1f} MB  "
            f"in use {point.in_use_mb:6.1f} MB  free {point.free_mb:5.1f} MB  "
            f"heap {point.heap_kblocks:4.0f}k blocks  sqlite {point.sqlite_mb:4.1f} MB  "
            f"children {sample.children_rss_mb:5.1f} MB  "
            f"fds {sample.fds:5d}  listeners {listening:4d}  CPU server {cpu:4.0%} clients {client_cpu:4.0%}",
            flush=True,
        )
        if sample.at_s >= seconds:
            return
        await asyncio.sleep(sampler.interval_s)


async def collections(http: aiohttp.ClientSession, base_url: str) -> list[Histogram]:
    """The server's cycle-collector pauses so far, by generation (0, 1, 2)."""
    return [await scrape_histogram(http, base_url, PAUSES, f'generation="{g}"') for g in range(3)]


def print_collections(pauses: list[Histogram], minutes: float) -> None:
    """Each generation's collections while the listeners were connected: they stop the whole server."""
    print("\ncycle collections while the listeners were connected (each stops the server):")
    for generation, h in enumerate(pauses):
        if not h.count:
            print(f"  generation {generation}: none")
            continue
        print(
            f"  generation {generation}: {h.count:.0f} ({h.count / minutes:.1f} a minute), "
            f"mean {h.total / h.count * 1000:.1f} ms, longest <= {h.bound(1.0) * 1000:g} ms"
        )


async def run(args: argparse.Namespace, server: ServerProcess) -> tuple[list[Point], dict, Counter, Counter, list]:
    token = (await server.create_channels([CHANNEL]))[CHANNEL]
    await server.start()
    pool = WorkerPool(args.workers, ListenerWorker, "127.0.0.1", server.port)
    behaviour = Behaviour(
        fetch_fraction=args.fetch_fraction,
        ack=args.ack,
        time_sync_s=args.clock_every_s,
        mean_lifetime_s=args.churn_minutes * 60,
        deflate=args.deflate,
    )
    series: list[Point] = []
    live_counts: Counter = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as http:
        producer = Producer(http, server.base_url, token, args.submit_every)
        try:
            connected = sum(
                await pool.call("start", [([CHANNEL] * n, behaviour) for n in split(args.listeners, len(pool))])
            )
            print(f"{connected} listeners connected; running {args.minutes:g} min", flush=True)
            background = [asyncio.create_task(producer.run())]
            background += [
                asyncio.create_task(live_player(http, server.base_url, live_counts)) for _ in range(args.live_players)
            ]
            sampler = MemorySampler(server.pid, args.sample_s)
            before = await collections(http, server.base_url)
            await sample_loop(server, pool, sampler, http, series, args.minutes * 60)
            pauses = [after.minus(then) for after, then in zip(await collections(http, server.base_url), before)]
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            load = merge_reports(await pool.call("stop"))
        finally:
            await pool.close()
    return series, load, producer.counts, live_counts, pauses


def trend(label: str, unit: str, points: list[Point], value: Callable[[Point], float]) -> bool:
    """Print the early and final value and the second half's fitted growth; True when that growth is
    within the noise (twice the residual spread, and at least 1 unit)."""
    end = points[-1].memory.at_s
    early = next(p for p in points if p.memory.at_s >= min(EARLY_S, end / 2))
    half = [p for p in points if p.memory.at_s >= end / 2]
    slope_s, _, spread = least_squares([p.memory.at_s for p in half], [value(p) for p in half])
    growth = slope_s * (half[-1].memory.at_s - half[0].memory.at_s)
    flat = growth <= max(2 * spread, 1.0)
    print(
        f"{label}: {value(early):.1f} {unit} at {early.memory.at_s / 60:.1f} min, {value(points[-1]):.1f} at "
        f"{end / 60:.1f} min; second half: {slope_s * 3600:+.1f} {unit}/hour, fitted growth {growth:+.1f} "
        f"(noise {spread:.2f}): {'flat' if flat else 'GROWING'}"
    )
    return flat


def verdict(series: list[Point], minutes: float) -> None:
    print()
    trend("RSS", "MB", series, lambda p: p.memory.rss_mb)
    trend("chunk cache (bounded)", "MB", series, lambda p: p.cache_mb)
    flat = trend("RSS less the chunk cache", "MB", series, lambda p: p.rss_less_cache_mb)
    # Live memory, whichever allocator holds Python's objects: a leak shows here, while RSS that
    # grows with these flat is a fragmented heap. A series the server does not report is all zeros.
    flat &= trend("C heap in use less the chunk cache", "MB", series, lambda p: p.in_use_less_cache_mb)
    trend("C heap free, held", "MB", series, lambda p: p.free_mb)
    if any(p.heap_kblocks for p in series):
        flat &= trend("Python heap (pymalloc)", "k blocks", series, lambda p: p.heap_kblocks)
    trend("SQLite (part of RSS)", "MB", series, lambda p: p.sqlite_mb)
    first, end = series[0].memory, series[-1].memory
    half = [p.memory for p in series if p.memory.at_s >= end.at_s / 2]
    fd_slope, _, _ = least_squares([s.at_s for s in half], [float(s.fds) for s in half])
    print(
        f"open files: {first.fds} -> {end.fds} (second-half slope {fd_slope * 3600:+.0f}/hour); "
        f"threads {first.threads} -> {end.threads}; VmHWM {end.hwm_mb:.1f} MB"
    )
    caveat = "  (a short run: only a smoke test of the trend)" if minutes < 20 else ""
    print(f"verdict (RSS and the heap in use, each less the bounded cache): {'FLAT' if flat else 'GROWING'}{caveat}")


def print_series(series: list[Point]) -> None:
    rows = [
        [
            f"{p.memory.at_s / 60:.1f}",
            p.memory.rss_mb,
            p.cache_mb,
            p.rss_less_cache_mb,
            p.in_use_mb,
            p.free_mb,
            f"{p.heap_kblocks:.0f}",
            f"{p.sqlite_mb:.1f}",
            p.memory.hwm_mb,
            p.memory.children_rss_mb,
            p.memory.fds,
            p.memory.threads,
            p.listening,
            p.data_mb,
            f"{p.cpu:.0%}",
            f"{p.client_cpu:.0%}",
        ]
        for p in series
    ]
    print("\nserver memory over time (CPU: share of one core since the previous sample)\n")
    print(
        table(
            [
                "min",
                "RSS MB",
                "cache MB",
                "RSS-cache MB",
                "in use MB",
                "free MB",
                "heap kblocks",
                "SQLite MB",
                "HWM MB",
                "children MB",
                "fds",
                "threads",
                "listeners",
                "data MB",
                "server CPU",
                "clients CPU",
            ],
            rows,
        )
    )


def print_activity(load: dict, posts: Counter, live: Counter) -> None:
    counts = load["counts"]
    fetched = sum(v for k, v in counts.items() if k.startswith("fetch 2"))
    failed = sum(
        v for k, v in counts.items() if k.startswith("fetch") and not k.startswith("fetch 2") and k != "fetched bytes"
    )
    late = sum(1 for spare in load["fetch_spare_ms"] if spare < 0)
    print(f"\nproducer: {dict(posts)}")
    print(
        f"listeners: {counts['connects']} connects, {counts['left (churn)']} left by churn, closed by the server "
        f"{ {k: v for k, v in counts.items() if k.startswith('closed by server')} or 'never' }"
    )
    print(
        f"  messages: {counts['msg audio_chunk_ready']} chunk announcements, {counts['msg timeline_shifted']} "
        f"timeline shifts, {counts['msg error']} errors"
    )
    print(
        f"  fetches: {fetched} OK, {failed} failed, p50 {percentile(load['fetch_ms'], 50):.0f} ms, "
        f"p99 {percentile(load['fetch_ms'], 99):.0f} ms, in hand after the chunk's start: {late}"
    )
    print(f"  acks: {counts['acks sent']} sent, {counts['msg ack_recorded']} recorded")
    failures = {k: v for k, v in counts.items() if k.startswith("connect failed")}
    if failures:
        print(f"  connect failures: {failures}")
    print(f"live.mp3 players: {dict(live)}")


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    tcp_before = tcp_counters()
    settings = {"tts": {"engine": args.engine}, "server": {"chunk_cache_mb": args.cache_mb}}
    server = ServerProcess(with_uncapped_limits(settings), profile_path=args.profile)
    try:
        series, load, posts, live, pauses = await run(args, server)
        print_series(series)
        print_activity(load, posts, live)
        print_collections(pauses, args.minutes)
        verdict(series, args.minutes)
        print(tcp_summary(tcp_before))
        print(server.problems())
    finally:
        server.remove(keep=args.keep)
    if args.profile:
        print(f"\nserver profile ({args.profile}), by own time:\n{profile_summary(args.profile)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--listeners", type=int, default=500)
    parser.add_argument("--engine", choices=["tone", "piper"], default="tone")
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--sample-s", type=float, default=15, help="seconds between memory samples")
    parser.add_argument("--submit-every", type=float, default=20, help="mean seconds between narrations")
    parser.add_argument("--churn-minutes", type=float, default=10, help="mean time a listener stays (0: forever)")
    parser.add_argument("--fetch-fraction", type=float, default=1.0, help="share of chunks each listener fetches")
    parser.add_argument(
        "--ack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="listeners send audio_played for each chunk, as the page does (default)",
    )
    parser.add_argument(
        "--clock-every-s",
        type=float,
        default=5.0,
        help="seconds between a listener's clock samples, as the page's (0: none)",
    )
    parser.add_argument("--cache-mb", type=float, default=16, help="the server's [server] chunk_cache_mb")
    parser.add_argument("--live-players", type=int, default=2)
    parser.add_argument(
        "--deflate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="listeners offer permessage-deflate like a browser (default) or not",
    )
    parser.add_argument("--profile", type=Path, help="run the server under cProfile and write its stats here")
    parser.add_argument("--keep", action="store_true", help="keep the server's data dir and log")
    asyncio.run(main(parser.parse_args()))
