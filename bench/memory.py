"""Server memory with the Piper voice loaded: idle, with N listeners, and with N listeners during a narration.

Starts the real server as its own process (Piper, the bundled voice, a
temporary data dir, per-address caps off) and reads its VmRSS and VmHWM from
/proc/<pid>/status, with the RSS of its child processes (the ffmpeg encoders)
beside it. Then connects N browser-like listeners from worker processes (they
offer permessage-deflate, send clock samples, fetch every announced chunk's
MP3 and acknowledge it when it has played; see bench/listeners.py), lets a
narration of several sentences play, and samples memory every 0.25 s until it
has played out. The baselines are the idle server with the voice loaded, and the
same narration played first with nobody listening (its peak, and the server after
it): what listeners cost is measured against them.
Target (docs/performance.md): RSS within 250 MB with the voice and 1000 listeners.

    .venv/bin/python bench/memory.py [--listeners 1000] [--workers 4] [--fetch-fraction 1.0] [--no-deflate]
                                     [--cluster-workers N] [--root DIR]

With --cluster-workers N the server runs as N worker processes in cluster mode (a PostgreSQL
and a Redis started for the run), and "the server" is its workers together: their RSS summed
(each with its own voice), their ffmpeg encoders counted as children.
"""

import argparse
import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import aiohttp
from announce import cluster_args, cluster_engines
from listeners import Behaviour, ListenerWorker, merge_reports
from report import percentile, table
from serverproc import (
    ROOT,
    MemorySample,
    MemorySampler,
    ServerProcess,
    _command_name,
    descendants,
    narrate,
    open_fds,
    raise_nofile,
    sample_memory,
    status_kb,
    tcp_counters,
    tcp_summary,
    wait_listeners,
    with_uncapped_limits,
)
from texts import paragraph
from workers import WorkerPool, split

CHANNEL = "bench"
TARGET_MB = 250


async def settle_sample(sampler: MemorySampler, seconds: float) -> MemorySample:
    await asyncio.sleep(seconds)
    return await asyncio.to_thread(sampler.sample)


def bare_piper(text: str) -> MemorySample:
    """A fresh process that only loads the voice and speaks `text`: what Piper alone costs."""
    from piper import PiperVoice

    from tts.piper_engine import default_model_path

    voice = PiperVoice.load(default_model_path())
    for sentence in text.split(". "):
        for _ in voice.synthesize(sentence):
            pass
    return sample_memory(os.getpid(), time.monotonic())


async def piper_baseline(text: str) -> MemorySample:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return await asyncio.get_running_loop().run_in_executor(executor, bare_piper, text)


async def narration_peak(sampler, server: ServerProcess, http, token: str, text: str) -> MemorySample:
    """The same narration with nobody listening: what synthesis and encoding cost by themselves, the
    baseline of what listeners add while they fetch it."""
    start = len(sampler.samples)
    sampler.start()
    await narrate(server, http, token, CHANNEL, text)
    await asyncio.sleep(2)
    await sampler.stop()
    return max(sampler.samples[start:], key=lambda s: s.rss_mb)


async def run(args: argparse.Namespace, server: ServerProcess) -> None:
    text = " ".join(paragraph(i) for i in range(2))
    rows = [("bare Piper process, narration spoken", await piper_baseline(text))]
    token = (await server.create_channels([CHANNEL]))[CHANNEL]
    await server.start()
    sampler = (WorkersSampler if server.extra_args else MemorySampler)(server.pid, 0.25)
    rows.append(("server idle, voice loaded", await settle_sample(sampler, 3)))
    async with aiohttp.ClientSession() as http:
        rows.append(("narration, no listeners (peak)", await narration_peak(sampler, server, http, token, text)))
    rows.append(("after it, nobody listening", await settle_sample(sampler, 3)))
    pool = WorkerPool(args.workers, ListenerWorker, "127.0.0.1", server.port)
    behaviour = Behaviour(fetch_fraction=args.fetch_fraction, deflate=args.deflate)
    try:
        async with aiohttp.ClientSession() as http:
            per_worker = [([CHANNEL] * n, behaviour) for n in split(args.listeners, len(pool))]
            connected = sum(await pool.call("start", per_worker))
            counted = await wait_listeners(http, server.base_url, CHANNEL, connected, timeout_s=60)
            rows.append((f"{connected} listeners connected", await settle_sample(sampler, 3)))
            during_from = len(sampler.samples)
            sampler.start()
            story = await narrate(server, http, token, CHANNEL, text)
            await asyncio.sleep(5)  # the last acks, their replies and fetches
            await sampler.stop()
            during = sampler.samples[during_from:]
            rows.append((f"{connected} listeners, narration (peak)", max(during, key=lambda s: s.rss_mb)))
            load = merge_reports(await pool.call("report"))
            await pool.call("stop")
            await wait_listeners(http, server.base_url, CHANNEL, 0, timeout_s=60)
            rows.append(("after they left", await settle_sample(sampler, 3)))
    finally:
        await pool.close()
    print_memory(args, rows, connected, counted, max(during, key=lambda s: s.total_mb))
    print_load(story, load)


def print_memory(args: argparse.Namespace, rows: list, connected: int, counted: int, peak_total: MemorySample) -> None:
    bare, idle, alone, quiet, with_listeners, peak, after = (sample for _, sample in rows)
    print(
        f"\nserver memory (MB), Piper voice loaded; {connected} listeners "
        f"{'offering' if args.deflate else 'not offering'} permessage-deflate, "
        f"fetching {args.fetch_fraction:.0%} of chunks\n"
    )
    print(
        table(
            ["stage", "VmRSS", "vs idle", "VmHWM", "children RSS", "children", "threads", "fds"],
            [
                [
                    name,
                    s.rss_mb,
                    f"{s.rss_mb / idle.rss_mb:.2f}x",
                    s.hwm_mb,
                    s.children_rss_mb,
                    s.child_names or "-",
                    s.threads,
                    s.fds,
                ]
                for name, s in rows
            ],
        )
    )
    n = max(connected, 1)
    print(
        f"\nper listener: {(with_listeners.rss_mb - quiet.rss_mb) * 1024 / n:.1f} KB connected "
        f"({(with_listeners.rss_mb - idle.rss_mb) * 1024 / n:.0f} KB against the idle start), "
        f"{(peak.rss_mb - alone.rss_mb) * 1024 / n:.1f} KB fetching the narration (its peak against the "
        f"same narration's with nobody listening; {(peak.rss_mb - idle.rss_mb) * 1024 / n:.0f} KB against idle) "
        f"(the server counted {counted} listeners)"
    )
    # A fetching listener holds its socket and, like a browser, one or more keep-alive HTTP connections
    # (up to six when fetches overlap): what it costs is mostly connections, counted here by descriptor.
    print(
        f"descriptors: {with_listeners.fds} with the listeners connected, {peak.fds} at the fetching peak "
        f"({(peak.fds - quiet.fds) / n:.2f} a listener)"
    )
    print(f"server without Piper's share: idle {idle.rss_mb - bare.rss_mb:.1f} MB over the bare Piper process")
    print(
        f"peak of server + children together: {peak_total.total_mb:.1f} MB "
        f"(children then: {peak_total.child_names or 'none'}, {peak_total.children_rss_mb:.1f} MB)"
    )
    hwm = after.hwm_mb
    verdict = "meets" if hwm <= TARGET_MB else "MISSES"
    print(
        f"VmHWM {hwm:.1f} MB with the voice and {connected} listeners: {verdict} the target of "
        f"<= {TARGET_MB} MB ({hwm / TARGET_MB:.2f}x); idle alone is {idle.rss_mb / TARGET_MB:.2f}x"
    )


def print_load(story: dict, load: dict) -> None:
    counts = load["counts"]
    good = sum(v for k, v in counts.items() if k.startswith("fetch 2"))
    bad = sum(
        v for k, v in counts.items() if k.startswith("fetch") and not k.startswith("fetch 2") and k != "fetched bytes"
    )
    late = sum(1 for spare in load["fetch_spare_ms"] if spare < 0)
    closed = {k: v for k, v in counts.items() if k.startswith("closed by server")}
    print(f"\nnarration: {story['chunks']} chunks, {story['shifts']} timeline shifts, {story['outcome']}")
    print(
        f"chunk fetches: {good} OK, {bad} failed; announcement -> audio in hand p50 "
        f"{percentile(load['fetch_ms'], 50):.0f} ms, p99 {percentile(load['fetch_ms'], 99):.0f} ms, "
        f"max {max(load['fetch_ms'], default=0):.0f} ms; in hand only after the chunk's start: {late}"
    )
    print(
        f"acks sent {counts['acks sent']}, recorded {counts['msg ack_recorded']}; "
        f"closed by the server: {closed or 'none'}"
    )


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    tcp_before = tcp_counters()
    async with cluster_engines(args.cluster_workers, with_uncapped_limits({"tts": {"engine": "piper"}})) as settings:
        root = Path(args.root).resolve() if args.root else ROOT
        server = ServerProcess(settings, root=root, extra_args=cluster_args(args.cluster_workers))
        try:
            await run(args, server)
            print(tcp_summary(tcp_before))
            print(server.problems())
        finally:
            server.remove(keep=args.keep)


class WorkersSampler(MemorySampler):
    """The workers of `serve --workers N` as one server: their RSS summed, their encoders as children."""

    def sample(self) -> MemorySample:
        whole = sample_memory(self.pid, self.started)
        workers = [
            kid
            for kid in descendants(self.pid)
            if "python" in _command_name(kid) or "broadcaster" in _command_name(kid)
        ]
        rss = sum(status_kb(kid).get("VmRSS", 0) for kid in workers) / 1024
        hwm = sum(status_kb(kid).get("VmHWM", 0) for kid in workers) / 1024
        fds = sum(open_fds(kid) for kid in workers)
        sample = replace(whole, rss_mb=rss, hwm_mb=hwm, children_rss_mb=whole.children_rss_mb - rss, fds=fds)
        self.samples.append(sample)
        return sample


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--fetch-fraction", type=float, default=1.0, help="share of chunks each listener fetches")
    parser.add_argument(
        "--deflate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="offer permessage-deflate like a browser (default) or not",
    )
    parser.add_argument("--keep", action="store_true", help="keep the server's data dir and log")
    parser.add_argument("--root", help="run the server from this checkout (default: the one this script is in)")
    parser.add_argument(
        "--cluster-workers", type=int, default=0, metavar="N", help="run the server as N workers in cluster mode"
    )
    asyncio.run(main(parser.parse_args()))
