"""How fast the server takes in a burst of WebSocket listeners (a class opening the link at once).

Starts the real server as its own process (tone engine, per-address caps and
heartbeats off), then opens N listener connections (the upgrade only, each
held open) from `--parallel` client threads, and reports the wall time per
connection and the server's CPU time per connection (/proc). The baseline is
the same burst one connection at a time, on the same server, first: what one
arrival costs when nothing else is arriving.

    .venv/bin/python bench/connect.py [--listeners 3000] [--parallel 16]
"""

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from broadcast import upgrade
from report import table
from serverproc import ServerProcess, cpu_seconds, raise_nofile, with_uncapped_limits

CHANNEL = "bench"


def burst(port: int, count: int, parallel: int) -> tuple[list, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        socks = list(pool.map(lambda _: upgrade(port, CHANNEL), range(count)))
    return socks, time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    settings = with_uncapped_limits({"tts": {"engine": "tone"}})
    settings["limits"]["ws_heartbeat_s"] = 3600  # nobody answers pings here
    server = ServerProcess(settings)
    rows, held = [], []
    try:
        await server.create_channels([CHANNEL])
        await server.start()
        for parallel in (1, args.parallel):
            cpu_before = cpu_seconds(server.pid)
            socks, took = await asyncio.to_thread(burst, server.port, args.listeners, parallel)
            held += socks
            cpu = cpu_seconds(server.pid) - cpu_before
            rows.append(
                [
                    parallel,
                    args.listeners,
                    f"{took:.1f}",
                    f"{took / args.listeners * 1000:.2f}",
                    f"{cpu / args.listeners * 1000:.2f}",
                    f"{args.listeners / took:.0f}",
                ]
            )
            print(f"  {args.listeners} connections, {parallel} at a time: {took:.1f} s", flush=True)
    finally:
        for sock in held:
            sock.close()
        server.remove()
    print(
        table(
            [
                "at a time",
                "connections",
                "seconds",
                "ms per connection",
                "server CPU ms per connection",
                "connections per second",
            ],
            rows,
        )
    )
    base, burst_row = float(rows[0][3]), float(rows[1][3])
    print(
        f"\n{args.parallel} at a time: {base / burst_row:.2f}x the rate of one at a time "
        f"(the second burst joins an audience of {args.listeners} already connected)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=3000)
    parser.add_argument("--parallel", type=int, default=16, help="connections in flight at once")
    asyncio.run(main(parser.parse_args()))
