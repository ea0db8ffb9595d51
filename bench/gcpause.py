"""How long Python's cycle collector stops the server, with N WebSocket listeners connected.

Starts the real server as its own process (tone engine, per-address caps and
heartbeats off), connects listeners in batches of BATCH (the upgrade only; each
batch is then drained by its own reader process at idle priority), and then
churns them as a radio's audience does: one batch leaves, a new one arrives,
until the server has run at least `--collections` full collections (or
`--rounds` batches have turned over). The pauses come from the server's own
`broadcaster_gc_pause_seconds` histogram over the churn only.

The baseline is the same run with `[server] gc_freeze = false`, measured on a
fresh server in the same run, so the two rows differ only in the frozen
start-up heap.

    .venv/bin/python bench/gcpause.py [--listeners 1000 5000] [--collections 3] [--rounds 40]
"""

import argparse
import asyncio
import os
import time

import aiohttp
from broadcast import upgrade
from report import table
from sendcost import start_reader
from serverproc import ServerProcess, raise_nofile, scrape_histogram, wait_listeners, with_uncapped_limits

CHANNEL = "bench"
BATCH = 250
PAUSES = "broadcaster_gc_pause_seconds"


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


async def one_server(freeze: bool, listeners: int, collections: int, rounds: int) -> dict:
    settings = with_uncapped_limits({"tts": {"engine": "tone"}, "server": {"gc_freeze": freeze}})
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
            while turned < rounds:
                audience.leave()
                audience.join(BATCH)
                turned += 1
                full = (await scrape_histogram(http, server.base_url, PAUSES, 'generation="2"')).minus(before)
                if full.count >= collections:
                    break
            full = (await scrape_histogram(http, server.base_url, PAUSES, 'generation="2"')).minus(before)
            young = (await scrape_histogram(http, server.base_url, PAUSES, 'generation="1"')).minus(young_before)
            frozen = await gauge(http, server.base_url, "broadcaster_gc_frozen_objects")
        return {"full": full, "young": young, "turned": turned * BATCH, "seconds": time.monotonic() - started,
                "frozen": frozen}
    finally:
        if audience is not None:
            audience.close()
        server.remove()


async def gauge(http: aiohttp.ClientSession, base_url: str, name: str) -> float:
    async with http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def mean_ms(histogram) -> float:  # noqa: ANN001
    return histogram.total / histogram.count * 1000 if histogram.count else float("nan")


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    print(f"cycle collector pauses in the server while listeners come and go ({BATCH} at a time); "
          f"{os.cpu_count()} cores\n")
    rows = []
    for listeners in args.listeners:
        results = {}
        for label, freeze in (("off (baseline)", False), ("on (default)", True)):
            result = results[label] = await one_server(freeze, listeners, args.collections, args.rounds)
            full, young = result["full"], result["young"]
            rows.append([listeners, label, f"{result['frozen']:.0f}", result["turned"], f"{full.count:.0f}",
                         mean_ms(full), f"<= {full.bound(1.0) * 1000:g}", f"{young.count:.0f}", mean_ms(young)])
            print(f"  {listeners} listeners, freeze {label}: {full.count:.0f} full collections, "
                  f"mean {mean_ms(full):.1f} ms", flush=True)
        base, now = (mean_ms(r["full"]) for r in results.values())
        print(f"  {listeners} listeners: full collection {base:.1f} ms -> {now:.1f} ms ({base / now:.2f}x)\n")
    print(table(["listeners", "freeze", "frozen objects", "listeners turned over", "full collections",
                 "full mean ms", "full max ms (bucket)", "gen-1 collections", "gen-1 mean ms"], rows))
    print("\nfull: a generation-2 collection, which walks every tracked object and stops the event loop meanwhile")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--collections", type=int, default=3, help="full collections to wait for per server")
    parser.add_argument("--rounds", type=int, default=40, help="at most this many batches turned over per server")
    asyncio.run(main(parser.parse_args()))
