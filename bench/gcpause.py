"""How long Python's cycle collector stops the server, with N WebSocket listeners connected.

Starts the real server as its own process (tone engine, per-address caps and
heartbeats off), connects listeners in batches of BATCH (the upgrade only; each
batch is then drained by its own reader process at idle priority), and then
churns them as a radio's audience does: one batch leaves, a new one arrives,
until the server has run at least `--collections` full collections (or
`--rounds` batches have turned over). The pauses come from the server's own
`broadcaster_gc_pause_seconds` histogram over the churn only.

The baseline is the same run with `[server] gc_freeze = "off"` (Python's
collector as it comes), measured on a fresh server in the same run. Then
"startup" (the start-up heap frozen), the default "audience" (also the
survivors of a full collection once a quarter of the audience is new, thawed
once the audience has turned over: with enough --rounds the thaws' full walks
are in the figures), then "survivors" (every full collection's survivors), and "survivors" with a thaw every 15 s and the churn
kept up for 40 s, so that its thaw's full walk, which comes every 10 minutes
by default, is in the figures.

    .venv/bin/python bench/gcpause.py [--listeners 1000 5000] [--collections 3] [--rounds 40]
                                      [--modes off startup audience survivors]
"""

import argparse
import asyncio
import os
import time

import aiohttp
from broadcast import upgrade
from report import table
from sendcost import start_reader
from serverproc import (
    ServerProcess,
    raise_nofile,
    sample_memory,
    scrape_gauges,
    scrape_histogram,
    wait_listeners,
    with_uncapped_limits,
)

CHANNEL = "bench"
BATCH = 250
PAUSES = "broadcaster_gc_pause_seconds"
FROZEN = "broadcaster_gc_frozen_objects"


class Audience:
    """Batches of connected listeners, each held by one reader process; a batch leaves when its reader dies."""

    def __init__(self, port: int):
        self.port = port
        self.readers: list[int] = []

    def join(self, count: int) -> None:
        socks = [upgrade(self.port, CHANNEL) for _ in range(count)]
        self.readers.append(start_reader(socks, "idle"))
        for sock in socks:
            sock.close()  # the reader holds them now

    def leave(self) -> None:
        pid = self.readers.pop(0)
        os.kill(pid, 9)
        os.waitpid(pid, 0)

    def close(self) -> None:
        while self.readers:
            self.leave()


VARIANTS = (  # label, [server] settings, seconds the churn lasts at least
    ("off (baseline)", {"gc_freeze": "off"}, 0),
    ("startup", {"gc_freeze": "startup"}, 0),
    ("audience (default)", {}, 0),
    ("survivors", {"gc_freeze": "survivors"}, 0),
    ("survivors, thaw every 15 s", {"gc_freeze": "survivors", "gc_thaw_minutes": 0.25}, 40),
)


async def one_server(server_settings: dict, listeners: int, collections: int, rounds: int, min_s: float) -> dict:
    settings = with_uncapped_limits({"tts": {"engine": "tone"}, "server": server_settings})
    settings["limits"]["ws_heartbeat_s"] = 3600  # the readers never answer a ping
    server = ServerProcess(settings)
    audience = None
    try:
        await server.create_channels([CHANNEL])
        await server.start()
        audience = Audience(server.port)
        async with aiohttp.ClientSession() as http:
            for _ in range(listeners // BATCH):
                audience.join(BATCH)
            await wait_listeners(http, server.base_url, CHANNEL, listeners // BATCH * BATCH)
            before = await scrape_histogram(http, server.base_url, PAUSES, 'generation="2"')
            young_before = await scrape_histogram(http, server.base_url, PAUSES, 'generation="1"')
            started, turned = time.monotonic(), 0
            while turned < rounds or time.monotonic() - started < min_s:
                audience.leave()
                audience.join(BATCH)
                turned += 1
                full = (await scrape_histogram(http, server.base_url, PAUSES, 'generation="2"')).minus(before)
                if full.count >= collections and time.monotonic() - started >= min_s:
                    break
            full = (await scrape_histogram(http, server.base_url, PAUSES, 'generation="2"')).minus(before)
            young = (await scrape_histogram(http, server.base_url, PAUSES, 'generation="1"')).minus(young_before)
            frozen = (await scrape_gauges(http, server.base_url, [FROZEN]))[FROZEN]
        return {
            "full": full,
            "young": young,
            "turned": turned * BATCH,
            "seconds": time.monotonic() - started,
            "frozen": frozen,
            "rss_mb": sample_memory(server.pid, time.monotonic()).rss_mb,
        }
    finally:
        if audience is not None:
            audience.close()
        server.remove()


def mean_ms(histogram) -> float:
    return histogram.total / histogram.count * 1000 if histogram.count else float("nan")


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    print(
        f"cycle collector pauses in the server while listeners come and go ({BATCH} at a time); "
        f"{os.cpu_count()} cores\n"
    )
    rows = []
    variants = [variant for variant in VARIANTS if variant[0].split()[0].rstrip(",") in args.modes]
    for listeners in args.listeners:
        results = []
        for label, server_settings, min_s in variants:
            result = await one_server(server_settings, listeners, args.collections, args.rounds, min_s)
            results.append(result)
            full, young = result["full"], result["young"]
            rows.append(
                [
                    listeners,
                    label,
                    f"{result['frozen']:.0f}",
                    result["turned"],
                    f"{result['seconds']:.0f}",
                    f"{full.count:.0f}",
                    mean_ms(full),
                    f"<= {full.bound(1.0) * 1000:g}",
                    f"{young.count:.0f}",
                    mean_ms(young),
                    result["rss_mb"],
                ]
            )
            print(
                f"  {listeners} listeners, freeze {label}: {full.count:.0f} full collections, "
                f"mean {mean_ms(full):.1f} ms",
                flush=True,
            )
        base = mean_ms(results[0]["full"])
        print(
            f"  {listeners} listeners: full collection {base:.1f} ms; "
            + ", ".join(
                f"{label} {base / mean_ms(r['full']):.2f}x" for (label, _, _), r in zip(variants[1:], results[1:])
            )
            + "\n"
        )
    print(
        table(
            [
                "listeners",
                "freeze",
                "frozen objects",
                "listeners turned over",
                "churn s",
                "full collections",
                "full mean ms",
                "full max ms (bucket)",
                "gen-1 collections",
                "gen-1 mean ms",
                "RSS MB",
            ],
            rows,
        )
    )
    print("\nfull: a generation-2 collection, which walks every tracked object and stops the event loop meanwhile")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--collections", type=int, default=3, help="full collections to wait for per server")
    parser.add_argument("--rounds", type=int, default=40, help="at most this many batches turned over per server")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["off", "startup", "audience", "survivors"],
        help="gc_freeze modes to run, the first being the baseline (survivors: both rows)",
    )
    asyncio.run(main(parser.parse_args()))
