"""A listener that stops reading is dropped; the others keep getting every broadcast, in order, without waiting.

Delivery latency is shown, not asserted: the producer submits in lockstep (request k+1 only after every
fast listener has seen the announcement of k) before, during and after the stall. If fan-out ever waited
on the stalled socket the lockstep would hang, and a generous bound turns a hang into a failure. The
per-message latencies are printed for a person to read (pytest -s).
"""

import asyncio
import json
import socket
import statistics
import time
from dataclasses import dataclass, field

import pytest
import websockets
from conftest import raw_websocket

from web.fanout import TOO_SLOW
from web.keys import HUB

pytestmark = pytest.mark.server_config(
    {
        "limits": {
            "ws_send_queue": 16,
            "ws_socket_buffer_bytes": 4096,
            "ws_heartbeat_s": 300,
            "max_connections_per_address": 0,
            "producer_writes_per_minute": 1_000_000,
            "producer_write_burst": 1_000_000,
        },
        "tts": {"tone_delay_ms": 1500},  # slow synthesis: few chunks, so the queue (and every queue update) grows
    }
)

FAST_LISTENERS = 3
STEP_BOUND_S = 15  # one submission seen by every fast listener; only a hang gets near this
MAX_STALLED_STEPS = 80
# Each queued request's text rides in every playback_queue_updated, so the messages grow as the queue does.
TEXT = " ".join(
    f"Sentence {i} keeps the queue heavy with words that no listener ever needs to read, "
    "again and again and again, so that every queue update weighs a little more."
    for i in range(6)
)


@dataclass
class Fast:
    """A reading listener: every message with the moment it arrived."""

    ws: websockets.ClientConnection
    arrivals: list[tuple[float, dict]] = field(default_factory=list)
    mentions: dict[str, int] = field(default_factory=dict)  # request id -> index of the first queue update listing it

    def first_mention(self, request_id: str) -> int | None:
        return self.mentions.get(request_id)

    def add(self, message: dict) -> None:
        if message["type"] == "playback_queue_updated":
            for item in message["queue"]:
                self.mentions.setdefault(item["request_id"], len(self.arrivals))
        self.arrivals.append((time.perf_counter(), message))


class StalledPeer:
    """A raw WebSocket client with a small receive buffer that reads frames until told to stop."""

    def __init__(self, sock: socket.socket, buffer: bytes):
        self.sock, self.buffer = sock, buffer
        self.frames: list[tuple[int, bytes]] = []
        self.reader: asyncio.Task | None = None
        self.eof = False

    @classmethod
    async def open(cls, url: str) -> "StalledPeer":
        return cls(*await raw_websocket(url, receive_buffer=4096))

    def resume(self) -> None:
        self.reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)

    async def read_to_end(self) -> None:
        self.resume()
        await self.reader

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._split()
            try:
                data = await loop.sock_recv(self.sock, 65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                self._split()
                return
            self.buffer += data

    def _split(self) -> None:
        while len(self.buffer) >= 2:
            length, start = self.buffer[1] & 0x7F, 2
            if length in (126, 127):
                start = 4 if length == 126 else 10
                if len(self.buffer) < start:
                    return
                length = int.from_bytes(self.buffer[2:start], "big")
            if len(self.buffer) < start + length:
                return
            self.frames.append((self.buffer[0] & 0x0F, self.buffer[start : start + length]))
            self.buffer = self.buffer[start + length :]

    def close_code(self) -> int | None:
        codes = [int.from_bytes(payload[:2], "big") for opcode, payload in self.frames if opcode == 0x8]
        return codes[0] if codes else None

    def connection_id(self) -> str:
        opcode, payload = self.frames[0]
        assert opcode == 0x1
        message = json.loads(payload)
        assert message["type"] == "snapshot"
        return message["connection_id"]


async def read_all(listener: Fast, arrived: asyncio.Event) -> None:
    async for text in listener.ws:
        listener.add(json.loads(text))
        arrived.set()


async def lockstep(server, fast: list[Fast], arrived: asyncio.Event, latencies: list[float]) -> str:
    """Submit one request and wait until every fast listener has seen it announced."""
    sent = time.perf_counter()
    response = await server.say(TEXT)
    assert response.status == 202
    request_id = (await response.json())["request_id"]
    try:
        async with asyncio.timeout(STEP_BOUND_S):
            while any(listener.first_mention(request_id) is None for listener in fast):
                arrived.clear()
                await arrived.wait()
    except TimeoutError:
        raise AssertionError(f"a fast listener did not see request {request_id} announced: fan-out hung") from None
    for listener in fast:
        latencies.append((listener.arrivals[listener.first_mention(request_id)][0] - sent) * 1000)
    return request_id


def report(phase: str, latencies: list[float]) -> None:
    print(
        f"{phase:>7}: {len(latencies):3d} deliveries, median {statistics.median(latencies):6.1f} ms, "
        f"max {max(latencies):6.1f} ms"
    )


async def test_stalled_listener_is_dropped_and_the_rest_get_everything_in_lockstep(server, connect):
    """A listener that stops reading is dropped (4008 or gone); three reading listeners see every
    submission announced, in order and identically, and the lockstep never stalls before, during or after."""
    hub = server.app[HUB]
    arrived = asyncio.Event()
    fast = [Fast((await connect()).ws) for _ in range(FAST_LISTENERS)]
    readers = [asyncio.create_task(read_all(listener, arrived)) for listener in fast]
    async with asyncio.timeout(STEP_BOUND_S):  # a snapshot taken after the first submission would already list it
        while not all(listener.arrivals for listener in fast):
            arrived.clear()
            await arrived.wait()
    stalled = await StalledPeer.open(server.ws_url())
    stalled.resume()
    submitted: list[str] = []
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    try:
        for _ in range(5):
            submitted.append(await lockstep(server, fast, arrived, phases["before"]))
        assert hub.count(server.channel) == FAST_LISTENERS + 1 and hub.dropped_total == 0
        stalled_id = stalled.connection_id()

        await stalled.stop()  # from here on nothing reads the stalled socket
        for _ in range(MAX_STALLED_STEPS):
            submitted.append(await lockstep(server, fast, arrived, phases["during"]))
            if hub.dropped_total:
                break
        assert hub.dropped_total == 1, f"the stalled listener was not dropped after {MAX_STALLED_STEPS} submissions"
        for _ in range(5):
            submitted.append(await lockstep(server, fast, arrived, phases["after"]))

        assert all(listener.connection_id != stalled_id for listener in hub.listeners[server.channel])
        status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
        assert status == 200 and state["listeners"] == FAST_LISTENERS
        assert all(not reader.done() for reader in readers), "a fast listener was disconnected"
        async with asyncio.timeout(30):
            await stalled.read_to_end()
        assert stalled.eof and stalled.close_code() in (TOO_SLOW, None)  # closed with 4008, or just gone
    finally:
        stalled.sock.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    seen = []
    for listener in fast:
        mentions = [listener.first_mention(rid) for rid in submitted]
        assert None not in mentions and mentions == sorted(mentions), "announcements missing or out of order"
        seen.append([message for _, message in listener.arrivals[mentions[0] : mentions[-1] + 1]])
    assert all(messages == seen[0] for messages in seen), "the fast listeners did not get the same broadcasts"
    print(
        f"\nstalled listener: close code {stalled.close_code()} after {len(phases['during']) // FAST_LISTENERS} "
        "stalled submissions"
    )
    for phase, latencies in phases.items():
        report(phase, latencies)
