"""The server's CPU time per chunk fetch: what a thousand listeners fetching one sentence cost it.

Every listener fetches every chunk it is told about, so a narration heard by
N listeners makes N fetches of each sentence within moments of its
announcement; their total sets how much lead a large audience needs (see
bench/lead.py). This starts the real server as its own process (tone engine,
a temporary data dir, per-address caps off), makes one chunk, and times
--fetches GETs of its MP3 over --connections keep-alive connections, reading
the server's CPU time from /proc before and after. It does so alternately
with the access log writing a line per fetch (`[server] log_audio_fetches =
true`, the baseline) and without (the default), on fresh servers.

    .venv/bin/python bench/fetchcost.py [--fetches 2000] [--connections 200] [--rounds 2]
"""

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
from report import table
from serverproc import ServerProcess, cpu_seconds, with_uncapped_limits

CHANNEL = "bench"


async def one_chunk(server: ServerProcess, token: str) -> str:
    """Submit a sentence and return the URL of its chunk once announced."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.base_url.replace("http", "ws") + f"/ws/channels/{CHANNEL}") as ws:
            async with http.post(
                f"{server.base_url}/api/channels/{CHANNEL}/requests",
                json={"text": "A sentence that every listener fetches at once."},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                await resp.read()
            async for msg in ws:
                message = json.loads(msg.data)
                if message["type"] == "audio_chunk_ready":
                    return message["url"]
    raise RuntimeError("expected an audio_chunk_ready, but the socket closed")


async def measure(logged: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(server CPU ms per fetch, wall seconds) for one burst on a fresh server."""
    settings = with_uncapped_limits(
        {"tts": {"engine": "tone", "tone_ms_per_char": 30}, "server": {"log_audio_fetches": logged}}
    )
    server = ServerProcess(settings)
    try:
        token = (await server.create_channels([CHANNEL]))[CHANNEL]
        await server.start()
        url = server.base_url + await one_chunk(server, token)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.connections)) as http:

            async def fetch() -> None:
                async with http.get(url) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"expected 200 for the chunk, got {resp.status}")
                    await resp.read()

            await asyncio.gather(*(fetch() for _ in range(args.connections)))  # open the connections
            cpu, started = cpu_seconds(server.pid), time.monotonic()
            await asyncio.gather(*(fetch() for _ in range(args.fetches)))
            return (cpu_seconds(server.pid) - cpu) * 1000 / args.fetches, time.monotonic() - started
    finally:
        server.remove()


async def main(args: argparse.Namespace) -> None:
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for logged in (True, False):
            results[logged].append(await measure(logged, args))
            cpu_ms, wall_s = results[logged][-1]
            print(
                f"access log {'on ' if logged else 'off'}: {cpu_ms:.3f} ms of server CPU per fetch, "
                f"{args.fetches} fetches in {wall_s:.2f} s",
                flush=True,
            )
    base = statistics.median(cpu for cpu, _ in results[True])
    rows = [
        [
            ("a line per fetch (log_audio_fetches = true)" if logged else "failures only (the default)"),
            f"{statistics.median(cpu for cpu, _ in runs):.3f}",
            f"{base / statistics.median(cpu for cpu, _ in runs):.2f}x",
            f"{statistics.median(wall for _, wall in runs):.2f}",
        ]
        for logged, runs in results.items()
    ]
    print(
        f"\n{args.fetches} fetches of one chunk over {args.connections} keep-alive connections, "
        f"median of {args.rounds} servers each\n"
    )
    print(table(["access log", "server CPU ms per fetch", "fetches per CPU second vs logged", "wall s"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetches", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="servers of each kind, alternating")
    asyncio.run(main(parser.parse_args()))
