"""The server's own time per broadcast to N WebSocket listeners, with clients that cost next to nothing.

Starts the real server as its own process (tone engine, per-address caps and
heartbeats off), opens N WebSocket connections by hand (the upgrade only) and
hands them to reader processes at idle priority that just drain the bytes, so
the clients take as little CPU from the server as clients on other machines
would. Then POSTs short narrations and reads the server's
`broadcaster_broadcast_seconds` histogram. It does this once with the
server writing every broadcast alone (`fanout_processes = 1`, the baseline)
and once with its default helpers, and repeats the pair.

    .venv/bin/python bench/broadcast.py [--sockets 5000] [--posts 12] [--pairs 2]
"""

import argparse
import asyncio
import base64
import os
import random
import socket

import aiohttp
from sendcost import start_reader
from serverproc import ServerProcess, raise_nofile, scrape_histogram, wait_listeners, with_uncapped_limits

CHANNEL = "bench"
BROADCAST = "broadcaster_broadcast_seconds"


def upgrade(port: int, channel: str = CHANNEL) -> socket.socket:
    """A WebSocket connection to `channel`, opened by hand: the upgrade only."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/channels/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise RuntimeError("the server closed the connection during the upgrade")
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"expected 101 Switching Protocols, got {head.splitlines()[0]!r}")
    return sock


def start_readers(socks: list[socket.socket], count: int) -> list[int]:
    return [start_reader(socks[k::count], "idle") for k in range(count)]


async def one_server(processes: int, sockets: int, posts: int) -> tuple[float, float]:
    """(mean broadcast seconds, broadcasts) with `processes` fan-out processes."""
    settings = with_uncapped_limits(
        {"tts": {"engine": "tone", "tone_ms_per_char": 30}, "server": {"fanout_processes": processes}}
    )
    settings["limits"]["ws_heartbeat_s"] = 3600  # the drainers never answer a ping
    server = ServerProcess(settings)
    pids: list[int] = []
    try:
        token = (await server.create_channels([CHANNEL]))[CHANNEL]
        await server.start()
        socks = [upgrade(server.port) for _ in range(sockets)]
        pids = start_readers(socks, 2)
        for sock in socks:
            sock.close()  # the readers hold them now
        async with aiohttp.ClientSession() as http:
            await wait_listeners(http, server.base_url, CHANNEL, sockets)
            await asyncio.sleep(1.0)
            before = await scrape_histogram(http, server.base_url, BROADCAST)
            for k in range(posts):
                async with http.post(
                    f"{server.base_url}/api/channels/{CHANNEL}/requests",
                    json={"text": f"Broadcast number {k + 1}."},
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"expected 202 from the submit, got {resp.status}")
                await asyncio.sleep(1.5 * random.uniform(0.75, 1.25))
            await asyncio.sleep(2.0)
            took = (await scrape_histogram(http, server.base_url, BROADCAST)).minus(before)
        return took.total / took.count, took.count
    finally:
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        server.remove()


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    print(
        f"server time per broadcast to {args.sockets} WebSocket listeners (drained at idle priority), "
        f"{args.posts} POSTs per server; {os.cpu_count()} cores\n"
    )
    results: dict[str, list[float]] = {"1 (baseline)": [], "default": []}
    for _ in range(args.pairs):
        for label, processes in (("1 (baseline)", 1), ("default", 0)):
            mean_s, count = await one_server(processes, args.sockets, args.posts)
            results[label].append(mean_s * 1000)
            print(f"  fan-out processes {label:12s}: {count:.0f} broadcasts, mean {mean_s * 1000:.1f} ms", flush=True)
    base = sum(results["1 (baseline)"]) / args.pairs
    now = sum(results["default"]) / args.pairs
    print(
        f"\nmean over {args.pairs} servers each: one process {base:.1f} ms, with helpers {now:.1f} ms "
        f"({base / now:.2f}x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--posts", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=2, help="servers of each kind, alternating")
    asyncio.run(main(parser.parse_args()))
