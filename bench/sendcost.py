"""What one WebSocket send costs the server, and how much of it is ours to save.

An aiohttp server in this process holds N WebSocket listeners (clients in a process of their
own at idle priority, reading as they come, as clients on other machines would). Each round
times, on this process's clock, one message to all of them three ways:

- the fan-out as the server does it (web/fanout.py: the frame built once and written to each
  connection's transport in one `Transport.write`, when nothing waits in its buffer);
- aiohttp's `send_frame` per listener, as the fan-out did before (and still does for a socket
  with a backlog);
- the floor under any library: the same frame written straight to each transport, no checks
  (asyncio's write and the kernel's loopback send, nothing else);

and a step of three messages (the chunk that starts a narration, to a listener that did not ask
for batches) the same three ways. The floor is what more processes, not leaner code, must share out.

    .venv/bin/python bench/sendcost.py [--sockets 2500] [--rounds 15]
"""

import argparse
import asyncio
import statistics
import struct
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lightws import open_socket
from bench.serverproc import raise_nofile
from bench.workers import WorkerPool
from web.fanout import Listener

PAYLOAD = b'{"type": "playback_queue_updated", "queue": [], "recent": [' + b'"x", ' * 40 + b'"x"], "repeat": "off"}'


class Holders:
    """A client process: opens sockets and keeps reading them until told to stop."""

    def __init__(self, index: int, port: int) -> None:
        self.port = port
        self.sockets: list = []

    async def connect(self, count: int) -> int:
        for _ in range(count):
            self.sockets.append(await open_socket("127.0.0.1", self.port, "/ws"))
        return len(self.sockets)

    async def aclose(self) -> None:
        for sock in self.sockets:
            sock.sock.close()


def text_frame(payload: bytes) -> bytes:
    """RFC 6455: a final, unmasked text frame (as a server sends it)."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    return struct.pack("!BBH", 0x81, 126, size) + payload


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    held: list[tuple[web.WebSocketResponse, asyncio.Transport]] = []

    async def accept(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        held.append((ws, request.transport))
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    pool = WorkerPool(1, Holders, port, priority="idle")
    try:
        await pool.call("connect", [(args.sockets,)])
        while len(held) < args.sockets:
            await asyncio.sleep(0.1)
        print(f"{len(held)} sockets; one message of {len(PAYLOAD)} bytes, {args.rounds} rounds, medians\n")
        report(await measure(held, args.rounds), len(held))
    finally:
        await pool.close()
        await runner.cleanup()


async def measure(held: list, rounds: int) -> dict[str, list[float]]:
    direct = [Listener(ws, str(n), "bench", 256, transport=transport) for n, (ws, transport) in enumerate(held)]
    each = [Listener(ws, str(n), "bench", 256) for n, (ws, _) in enumerate(held)]  # no transport: send_frame
    transports = [transport for _, transport in held]
    one, three = text_frame(PAYLOAD), text_frame(PAYLOAD) * 3
    ways = {
        "fan-out": lambda: [listener.offer_all((PAYLOAD,), one) for listener in direct],
        "send_frame": lambda: [listener.offer_all((PAYLOAD,)) for listener in each],
        "floor (transport.write)": lambda: [transport.write(one) for transport in transports],
        "3 messages, fan-out": lambda: [listener.offer_all((PAYLOAD,) * 3, three) for listener in direct],
        "3 messages, send_frame": lambda: [listener.offer_all((PAYLOAD,) * 3) for listener in each],
        "3 messages, floor": lambda: [transport.write(three) for transport in transports],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    await asyncio.sleep(1)
    for _ in range(rounds):
        for name, send in ways.items():  # interleaved, so a noisy second touches every way alike
            began = time.perf_counter()
            send()
            times[name].append(time.perf_counter() - began)
            await asyncio.sleep(0.3)  # the clients read it all before the next
    return times


def report(times: dict[str, list[float]], sockets: int) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"  {name:26s} {value * 1000:6.1f} ms   {value / sockets * 1e6:5.1f} µs a socket")
    for way in ("", "3 messages, "):
        fanout, each = medians[f"{way}fan-out"], medians[f"{way}send_frame"]
        floor = medians[f"{way}floor" + ("" if way else " (transport.write)")]
        label = way or "one message: "
        print(f"  {label}fan-out / floor = {fanout / floor:.2f}x, send_frame / fan-out = {each / fanout:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=2500, help="listeners (one worker's share of 5000)")
    parser.add_argument("--rounds", type=int, default=15)
    asyncio.run(main(parser.parse_args()))
