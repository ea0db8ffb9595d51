"""WebSocket announce latency: a producer's POST to every connected listener hearing of the request.

Starts the real server as its own process (tone engine, a temporary data dir,
per-address caps off), connects N listener sockets to /ws/channels/bench from
several worker processes, then POSTs K short narrations, spaced out. For each
socket and request it takes the time from sending the POST to that socket
receiving the first message that names the request: the
`playback_queue_updated` the submit publishes (docs/protocol.md). Receive
times are the kernel's (SO_TIMESTAMPNS, CLOCK_REALTIME, which the benchmark
process also stamps the POST with), so a busy client process does not
inflate them; the time each client read the frame is shown too.

Kernel times overestimate when a client falls behind: a frame not yet read
when the next one arrives is merged with it by TCP and takes the later time.
With thousands of sockets on the same cores the clients do fall behind, so a
few probe sockets (`--probes`) live in a process of their own that reads
promptly; they are connected in step with the others, so they sit all through
the server's order of writing, and their figures are the ones judged against
the target. The all-sockets figures are shown too.

The load clients share the server's two cores, and parsing every frame of
thousands of sockets in Python takes a good part of them. Clients on other
machines would take none, so with --load-clients quiet (how the target is
judged) they read all that has arrived before each POST and then stop
reading until its narration has been announced and played (QUIET_S); the
probes read on. The default keeps every client reading throughout.

The POSTs start --settle seconds after the last socket connected, once the
server has dealt with the burst of arrivals, so the figures are a connected
audience's. The probes of one POST are not independent samples: a pause of
the server delays them all at once, so with 20 POSTs the p99 of their
1000 samples lies within the single worst POST. The default of 100 POSTs
puts it among the worst 1% of what listeners got, as a p99 should be.

It also prints the server's CPU time per broadcast and per POST while the
POSTs went on (the server process and any long-lived processes of its own:
whatever it starts and keeps counts, the encoders that come and go do not),
and its resident memory per connected listener (the growth over the 1-socket
row).

The baseline is the same run with one socket, on the same server. Target
(docs/performance.md): p99 within 50 ms at 5000 sockets. `--root` runs the
server from another checkout (`git worktree add /tmp/before <commit>`), so
two versions are measured by the same client code.

    .venv/bin/python bench/announce.py [--sockets 1000 5000] [--posts 100] [--interval 1.5] [--workers 4]
                                       [--client-priority idle] [--probes 50] [--settle 12]
                                       [--load-clients quiet] [--per-post] [--root DIR]
"""

import argparse
import asyncio
import contextlib
import random
import re
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from lightws import open_socket
from report import percentile, table
from serverproc import (
    ROOT,
    Histogram,
    ServerProcess,
    cpu_seconds,
    descendants,
    free_port,
    raise_nofile,
    sample_memory,
    scrape_histogram,
    tcp_counters,
    tcp_summary,
    wait_listeners,
    with_uncapped_limits,
)
from workers import PRIORITIES, WorkerPool, split

CHANNEL = "bench"
REQUEST_ID = re.compile(rb'"request_id": "([0-9a-f]{16})"')
SETTINGS = with_uncapped_limits({"tts": {"engine": "tone", "tone_ms_per_char": 30}})
TARGET_P99_MS = 50
BROADCAST = "broadcaster_broadcast_seconds"
PAUSES, FULL = "broadcaster_gc_pause_seconds", 'generation="2"'
FORWARDED = "broadcaster_cluster_forwarded_requests_total"


class AnnounceWorker:
    """One client process: its share of the sockets, and when each first saw each request id."""

    def __init__(self, index: int, host: str, port: int, deflate: bool, batch: bool = True):
        self.index, self.host, self.port, self.deflate = index, host, port, deflate
        self.path = f"/ws/channels/{CHANNEL}" + ("?batch=1" if batch else "")
        self.sockets = []
        self.seen: list[dict[bytes, tuple[int, int]]] = []

    async def connect(self, count: int, concurrency: int) -> dict:
        gate = asyncio.Semaphore(concurrency)
        results = await asyncio.gather(*(self._open(gate) for _ in range(count)), return_exceptions=True)
        failures = Counter(f"{type(r).__name__}: {r}"[:120] for r in results if isinstance(r, BaseException))
        return {"connected": count - sum(failures.values()), "failures": dict(failures)}

    async def _open(self, gate: asyncio.Semaphore) -> None:
        seen: dict[bytes, tuple[int, int]] = {}

        def on_text(payload: bytes, kernel_ns: int, read_ns: int) -> None:
            for rid in REQUEST_ID.findall(payload):
                if rid not in seen:
                    seen[rid] = (kernel_ns, read_ns)

        async with gate:
            sock = await open_socket(self.host, self.port, self.path, on_text, deflate=self.deflate)
        self.sockets.append(sock)
        self.seen.append(seen)

    async def collect(self, request_ids: list[str]) -> dict:
        """Per request id: the kernel and read times (ns) of every socket that saw it, and how many did not."""
        out = {}
        for rid in request_ids:
            key = rid.encode()
            times = [seen[key] for seen in self.seen if key in seen]
            out[rid] = ([k for k, _ in times], [r for _, r in times], len(self.seen) - len(times))
        closed = Counter(s.closed.result() for s in self.sockets if s.closed.done())
        return {"times": out, "closed_early": dict(closed), "deflate": sum(s.deflate for s in self.sockets)}

    async def hold(self, quiet: bool) -> int:
        """Stop (or restart) reading every socket: a quiet client takes none of the cores meanwhile."""
        for sock in self.sockets:
            sock.pause() if quiet else sock.resume()
        return len(self.sockets)

    async def disconnect(self) -> int:
        await asyncio.gather(*(s.close() for s in self.sockets), return_exceptions=True)
        count = len(self.sockets)
        self.sockets, self.seen = [], []
        return count


@dataclass
class Stage:
    sockets: int
    connected: int = 0
    connect_s: float = 0.0
    failures: Counter = field(default_factory=Counter)
    kernel_ms: list[float] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)  # kernel times of the probe sockets only
    read_ms: list[float] = field(default_factory=list)
    spread_ms: list[float] = field(default_factory=list)  # per request: last socket minus first
    missed: int = 0
    closed_early: Counter = field(default_factory=Counter)
    deflate: int = 0  # sockets on which permessage-deflate was agreed
    answered_ms: list[float] = field(default_factory=list)  # POST sent -> its 202 received
    rss_mb: float = 0.0
    cpu_share: float = 0.0
    cpu_s: float = 0.0  # the server's CPU time (its own processes) while the POSTs went on
    broadcasts: Histogram | None = None  # the server's own time per broadcast, over this stage
    full_gcs: Histogram | None = None  # the server's full garbage collections while the POSTs went on
    per_post: list[tuple[float, float, float]] = field(default_factory=list)  # probes' first, median, last
    forwarded: float = 0  # POSTs that reached a worker not running the channel, passed on to its owner


# With --load-clients quiet, the load clients read all that has arrived and then stop reading, before
# each POST is sent, until this long after its answer, by when the narration's stream start and end
# have been announced too; then they catch up for at least CATCH_UP_S. Clients on other machines take
# none of the server's cores; reading here, 4950 sockets' worth of Python frame parsing shares them,
# and a broadcast written while they read takes two to three times as long.
QUIET_S = 1.2
CATCH_UP_S = 0.6
CONNECT_STEPS = 10  # probes join in step with the rest, so they are spread through the server's listener set


async def run_stage(
    server: ServerProcess,
    pools: tuple[WorkerPool, WorkerPool],
    http: aiohttp.ClientSession,
    token: str,
    sockets: int,
    probes: int,
    posts: int,
    interval_s: float,
    concurrency: int,
    settle_s: float,
    quiet_load: bool,
    metrics_urls: list[str],
    post_http: aiohttp.ClientSession,
) -> Stage:
    """`pools`: the load clients and the probe process; `probes` of the `sockets` are the probe's.
    `quiet_load`: the load clients stop reading around each POST (see QUIET_S). `metrics_urls`: where
    each of the server's processes answers /metrics; `post_http`: the session the POSTs go through."""
    pool, probe = pools
    stage = Stage(sockets)
    started = time.monotonic()
    probes = min(probes, sockets)
    for load_n, probe_n in zip(split(sockets - probes, CONNECT_STEPS), split(probes, CONNECT_STEPS)):
        answers = [
            *await pool.call("connect", [(n, concurrency) for n in split(load_n, len(pool))]),
            *await probe.call("connect", [(probe_n, concurrency)]),
        ]
        stage.connected += sum(a["connected"] for a in answers)
        for answer in answers:
            stage.failures.update(answer["failures"])
    await wait_listeners(http, server.base_url, CHANNEL, stage.connected)
    stage.connect_s = time.monotonic() - started
    # The coalesced listeners_changed goes out 0.5 s after the last join: the POSTs come well after it.
    await asyncio.sleep(max(1.0, settle_s))
    cpu0, t0 = process_cpu(server.pid), time.monotonic()
    before = await scrape_every(http, metrics_urls, BROADCAST)
    gcs_before = await scrape_every(http, metrics_urls, PAUSES, FULL)
    forwarded_before = await scrape_counter(http, metrics_urls, FORWARDED)
    hold = (lambda quiet: pool.call("hold", [(quiet,)] * len(pool))) if quiet_load else None
    sent = await post_narrations(post_http, server.base_url, token, posts, interval_s, stage.answered_ms, hold)
    await wait_idle(http, server.base_url)
    stage.broadcasts = (await scrape_every(http, metrics_urls, BROADCAST)).minus(before)
    stage.full_gcs = (await scrape_every(http, metrics_urls, PAUSES, FULL)).minus(gcs_before)
    stage.forwarded = await scrape_counter(http, metrics_urls, FORWARDED) - forwarded_before
    stage.cpu_s = cpu_spent(cpu0, process_cpu(server.pid))
    stage.cpu_share = stage.cpu_s / (time.monotonic() - t0)
    memory = sample_memory(server.pid, time.monotonic())
    # Workers: the server is its supervisor's children (the workers and their encoders).
    stage.rss_mb = memory.total_mb if "--workers" in server.extra_args else memory.rss_mb
    probed = await probe.call("collect", [(list(sent),)])
    absorb(stage, sent, [*await pool.call("collect", [(list(sent),)] * len(pool)), *probed])
    stage.probe_ms = [(t - sent[rid]) / 1e6 for rid, (kernel, _, _) in probed[0]["times"].items() for t in kernel]
    for rid, (kernel, _, _) in sorted(probed[0]["times"].items(), key=lambda item: sent[item[0]]):
        ms = sorted((t - sent[rid]) / 1e6 for t in kernel)
        stage.per_post.append((ms[0], ms[len(ms) // 2], ms[-1]) if ms else (float("nan"),) * 3)
    await pool.call("disconnect")
    await probe.call("disconnect")
    await wait_listeners(http, server.base_url, CHANNEL, 0)
    return stage


def process_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of the server and each process below it."""
    return {p: cpu_seconds(p) for p in (pid, *descendants(pid))}


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two samples, of the processes present in both: the server and the helpers
    it keeps, not the short-lived encoders (whose time is partly before or after either sample)."""
    return sum(after[p] - before[p] for p in before.keys() & after.keys())


async def post_narrations(
    http: aiohttp.ClientSession,
    base_url: str,
    token: str,
    posts: int,
    interval_s: float,
    answered_ms: list[float],
    hold=None,
) -> dict[str, int]:
    """POST `posts` narrations; returns the send time (time.time_ns) of each by request id. `hold(quiet)`,
    if given, quiets the load clients from before each POST until QUIET_S after its answer."""
    sent = {}
    for k in range(posts):
        if hold is not None:
            await hold(True)
        started = time.time_ns()
        async with http.post(
            f"{base_url}/api/channels/{CHANNEL}/requests",
            json={"text": f"Bench call {k + 1}."},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            body = await resp.json()
            answered_ms.append((time.time_ns() - started) / 1e6)
            if resp.status != 202:
                raise RuntimeError(f"expected 202 from the submit, got {resp.status}: {body}")
        sent[body["request_id"]] = started
        pause_s = interval_s * random.uniform(0.75, 1.25)  # no lockstep with the heartbeat or ticks
        if hold is not None:
            await asyncio.sleep(QUIET_S)
            await hold(False)
            pause_s = max(pause_s - QUIET_S, CATCH_UP_S)
        await asyncio.sleep(pause_s)
    return sent


async def wait_idle(http: aiohttp.ClientSession, base_url: str, timeout_s: float = 120) -> None:
    """Until the channel has played everything, so each stage starts from the same state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"{base_url}/api/channels/{CHANNEL}/audio/queue") as resp:
            state = await resp.json()
        if state["now_playing"] is None and not state["queue"]:
            return
        await asyncio.sleep(0.25)


def absorb(stage: Stage, sent: dict[str, int], answers: list[dict]) -> None:
    """Turn the workers' receive times into latencies (ms from each POST) and per-request fan-out spans."""
    per_request: dict[str, list[int]] = {}
    for answer in answers:
        stage.closed_early.update(answer["closed_early"])
        stage.deflate += answer["deflate"]
        for rid, (kernel, read, missing) in answer["times"].items():
            stage.kernel_ms += [(t - sent[rid]) / 1e6 for t in kernel]
            stage.read_ms += [(t - sent[rid]) / 1e6 for t in read]
            stage.missed += missing
            per_request.setdefault(rid, []).extend(kernel)
    stage.spread_ms = [(max(k) - min(k)) / 1e6 for k in per_request.values() if k]


def report_per_post(stage: Stage) -> None:
    print(f"\n{stage.sockets} sockets, per POST in order: ms to the first, median and last probe")
    for k, (first, median, last) in enumerate(stage.per_post, 1):
        print(f"  {k:3d}: {first:6.1f} {median:6.1f} {last:6.1f}")
    columns = list(zip(*stage.per_post))
    if columns:
        summary = ", ".join(
            f"{name} p50 {percentile(list(values), 50):.1f} (min {min(values):.1f}, max {max(values):.1f})"
            for name, values in zip(("first", "median", "last"), columns)
        )
        print(f"  over the POSTs, ms to each one's probes: {summary}")


def report(stages: list[Stage], posts: int, probes: int, offered: bool) -> None:
    base = percentile(stages[0].probe_ms, 99)
    print("\nannounce latency: POST sent -> the socket receives the playback_queue_updated naming the request")
    deflate = (
        f"permessage-deflate offered as browsers do, agreed on {stages[-1].deflate} of {stages[-1].connected} sockets"
        if offered
        else "no compression offered"
    )
    print(f"{posts} POSTs per row; kernel receive time (SO_TIMESTAMPNS); {deflate}; the baseline is the 1-socket row\n")
    rows = []
    for s in stages:
        p99 = percentile(s.probe_ms, 99)
        rows.append(
            [
                s.sockets,
                s.connected,
                len(s.probe_ms),
                percentile(s.probe_ms, 50),
                p99,
                max(s.probe_ms, default=float("nan")),
                f"{p99 / base:.1f}x" if base else "-",
                len(s.kernel_ms),
                s.missed,
                percentile(s.kernel_ms, 50),
                percentile(s.kernel_ms, 99),
                percentile(s.spread_ms, 50),
                percentile(s.answered_ms, 50),
                percentile(s.read_ms, 99),
                s.rss_mb,
                f"{s.cpu_share * 100:.0f}%",
                f"{s.connect_s:.1f}",
            ]
        )
    print(
        table(
            [
                "sockets",
                "connected",
                "probe samples",
                "probe p50 ms",
                "probe p99 ms",
                "probe max ms",
                "p99 vs 1",
                "all samples",
                "missed",
                "all p50 ms",
                "all p99 ms",
                "fan-out span p50 ms",
                "POST 202 p50 ms",
                "read p99 ms",
                "server RSS MB",
                "server CPU",
                "connect s",
            ],
            rows,
        )
    )
    print(
        "\nthe server's own time per broadcast, from its broadcaster_broadcast_seconds histogram "
        "(bucket bounds: p50 and p99 fall within them):"
    )
    for s in stages:
        b = s.broadcasts
        if b is not None and b.count:
            print(
                f"  {s.sockets:5d} sockets: {b.count:.0f} broadcasts, mean {b.total / b.count * 1000:.1f} ms, "
                f"p50 <= {b.bound(0.5) * 1000:g} ms, p99 <= {b.bound(0.99) * 1000:g} ms"
            )
    print(
        "\nthe server's full garbage collections while the POSTs went on (each stops the server; docs/performance.md):"
    )
    for s in stages:
        g = s.full_gcs
        if g is not None and g.count:
            print(f"  {s.sockets:5d} sockets: {g.count:.0f}, mean {g.total / g.count * 1000:.0f} ms")
        elif g is not None:
            print(f"  {s.sockets:5d} sockets: none")
    if any(s.forwarded for s in stages):
        print("\nPOSTs that reached a worker not running the channel and were passed on to its owner:")
        for s in stages:
            print(f"  {s.sockets:5d} sockets: {s.forwarded:.0f} of {posts}")
    print(
        "\nthe server's CPU time while the POSTs went on (its own process and any it keeps, both cores), "
        "and its memory per listener (RSS growth over the 1-socket row):"
    )
    for s in stages:
        b = s.broadcasts
        per_broadcast = f"{s.cpu_s / b.count * 1000:.1f} ms per broadcast" if b is not None and b.count else "-"
        per_listener = (s.rss_mb - stages[0].rss_mb) * 1024 / (s.sockets - 1) if s.sockets > 1 else None
        memory = f", {per_listener:.1f} KB per listener" if per_listener is not None else ""
        print(f"  {s.sockets:5d} sockets: {per_broadcast}, {s.cpu_s / posts * 1000:.1f} ms per POST{memory}")
    print("\nfan-out span: per request, last socket's receive time minus the first's (kernel times)")
    print("POST 202: from sending the POST to its answer (the announcement is queued for every socket before it)")
    print("read p99: the same latency measured when the client process read the frame (includes client lag)")
    print(
        "kernel times overestimate when a client falls behind: TCP merges a frame not yet read with the next "
        "one\n  (each POST makes several broadcasts within ~0.2 s), and the merged data carries the later time;\n"
        f"  the {probes} probe sockets are read promptly by a process of their own, so theirs do not"
    )
    for s in stages:
        if s.failures or s.closed_early:
            print(
                f"{s.sockets} sockets: connect failures {dict(s.failures)}; closed by the server {dict(s.closed_early)}"
            )
    largest = stages[-1]
    verdict = "meets" if percentile(largest.probe_ms, 99) <= TARGET_P99_MS else "MISSES"
    print(
        f"\n{largest.sockets} sockets: probe p99 {percentile(largest.probe_ms, 99):.1f} ms {verdict} "
        f"the target of <= {TARGET_P99_MS} ms (docs: at 5000 sockets)"
    )


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    tcp_before = tcp_counters()
    root = Path(args.root).resolve() if args.root else ROOT
    async with cluster_engines(args.cluster_workers) as settings:
        server = ServerProcess(settings, root=root, extra_args=cluster_args(args.cluster_workers))
        await measure(server, args, tcp_before)


@contextlib.asynccontextmanager
async def cluster_engines(workers: int, base: dict = SETTINGS):
    """The settings to run with: as they are for one process, or, for worker processes, cluster mode
    on a PostgreSQL and a Redis of its own (started here, as the tests start theirs)."""
    if not workers:
        yield base
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import PostgresServer, binaries
    from redis_server import RedisServer, redis_binary

    work = Path(tempfile.mkdtemp(prefix="broadcaster-announce-"))
    postgres, redis_ = PostgresServer(binaries()), RedisServer(redis_binary(), work / "redis")
    postgres.start()
    redis_.start()
    try:
        name = await postgres.create_database()
        yield {
            **base,
            "server": {"database_url": postgres.url(name)},
            # worker n on internal_port + n - 1: each is scraped there on its own
            "cluster": {"redis_url": redis_.url, "internal_port": free_ports(workers)},
        }
    finally:
        redis_.stop()
        postgres.close()
        shutil.rmtree(work, ignore_errors=True)


def cluster_args(workers: int) -> list[str]:
    return ["--workers", str(workers)] if workers else []


def free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports free now."""
    for _ in range(100):
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    held.enter_context(socket.create_server(("127.0.0.1", port)))
            return first
        except OSError:
            continue
    raise RuntimeError(f"found no {count} consecutive free ports")


def metrics_urls(server: ServerProcess, workers: int) -> list[str]:
    """Each process's own /metrics: the public port reaches whichever worker the kernel picks, so the
    workers are scraped on their internal ports (one process: its one port)."""
    if not workers:
        return [server.base_url]
    first = server.settings["cluster"]["internal_port"]
    return [f"http://127.0.0.1:{port}" for port in range(first, first + workers)]


async def scrape_counter(http: aiohttp.ClientSession, urls: list[str], name: str) -> float:
    """An unlabelled counter summed over every process (0 where a process has none)."""
    total = 0.0
    for url in urls:
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
        total += sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))
    return total


async def scrape_every(http: aiohttp.ClientSession, urls: list[str], name: str, labels: str = "") -> Histogram:
    """A histogram summed over every process."""
    parts = [await scrape_histogram(http, url, name, labels) for url in urls]
    return Histogram(
        [(le, sum(part.buckets[i][1] for part in parts)) for i, (le, _) in enumerate(parts[0].buckets)],
        sum(part.total for part in parts),
    )


async def measure(server: ServerProcess, args: argparse.Namespace, tcp_before: dict[str, int]) -> None:
    pools: list[WorkerPool] = []
    try:
        token = (await server.create_channels([CHANNEL]))[CHANNEL]
        await server.start()
        client = ("127.0.0.1", server.port, args.deflate, args.batch)
        pools.append(WorkerPool(args.workers, AnnounceWorker, *client, priority=args.client_priority))
        pools.append(WorkerPool(1, AnnounceWorker, *client))  # the probes: few sockets, read at once
        stages = []
        # In a cluster each POST comes on a connection of its own, as through a load balancer: the kernel
        # gives it to any worker, and those that do not run the channel pass it on to the one that does.
        spread = aiohttp.TCPConnector(force_close=True) if args.cluster_workers else None
        async with aiohttp.ClientSession() as http, aiohttp.ClientSession(connector=spread) as post_http:
            for sockets in [1, *args.sockets]:
                stage = await run_stage(
                    server,
                    (pools[0], pools[1]),
                    http,
                    token,
                    sockets,
                    args.probes,
                    args.posts,
                    args.interval,
                    args.concurrency,
                    args.settle,
                    args.load_clients == "quiet",
                    metrics_urls(server, args.cluster_workers),
                    post_http,
                )
                print(
                    f"{sockets} sockets: probes p50 {percentile(stage.probe_ms, 50):.1f} ms, "
                    f"p99 {percentile(stage.probe_ms, 99):.1f} ms; all sockets p50 "
                    f"{percentile(stage.kernel_ms, 50):.1f} ms, p99 {percentile(stage.kernel_ms, 99):.1f} ms",
                    flush=True,
                )
                stages.append(stage)
        report(stages, args.posts, args.probes, args.deflate)
        if args.per_post:
            report_per_post(stages[-1])
        print(
            f"client processes: {args.workers} at {args.client_priority} priority, {args.load_clients} during "
            f"the POSTs; server from {server.root}"
        )
        print(tcp_summary(tcp_before))
        print(server.problems())
    finally:
        for pool in pools:
            await pool.close()
        server.remove(keep=args.keep)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--posts", type=int, default=100, help="narrations POSTed per row")
    parser.add_argument("--interval", type=float, default=1.5, help="mean seconds between POSTs")
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="connects in flight per client process")
    parser.add_argument(
        "--probes", type=int, default=50, help="sockets of the promptly read probe process, judged against the target"
    )
    parser.add_argument(
        "--deflate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="offer permessage-deflate like a browser (default) or not",
    )
    parser.add_argument(
        "--batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask for a step's messages as one batch like the listener page (default) or not",
    )
    parser.add_argument(
        "--client-priority",
        choices=PRIORITIES,
        default="normal",
        help="the client processes' CPU priority (bench/workers.py lower_priority); 'idle' leaves "
        "the server the CPU that clients on other machines would not take from it",
    )
    parser.add_argument(
        "--load-clients",
        choices=("reading", "quiet"),
        default="reading",
        help="'quiet': the load clients stop reading from each POST until its announcements are "
        "out, as clients on other machines would take none of these cores (the probes read on)",
    )
    parser.add_argument("--root", help="run the server from this checkout (default: the one this script is in)")
    parser.add_argument(
        "--settle",
        type=float,
        default=12.0,
        help="seconds between the last connect and the first POST, so the latency measured is a "
        "connected audience's, not a burst of arrivals' (0: 1 s)",
    )
    parser.add_argument("--per-post", action="store_true", help="also list each POST's probe times (largest row)")
    parser.add_argument(
        "--cluster-workers",
        type=int,
        default=0,
        metavar="N",
        help="run the server as N worker processes in cluster mode, on a PostgreSQL and a Redis started for the "
        "run (0: one process, the embedded default). Histograms are summed over the workers, each scraped on its "
        "internal port, and each POST comes on a new connection, so any worker may take it",
    )
    parser.add_argument("--keep", action="store_true", help="keep the server's data dir and log")
    asyncio.run(main(parser.parse_args()))
