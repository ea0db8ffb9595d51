"""WebSocket heartbeats find dead peers and free what they held; live listeners are left alone."""

import asyncio
import inspect
import json
import socket

import pytest
import websockets
from conftest import raw_websocket

from web.keys import HUB

HEARTBEAT_S = 1.0  # small, yet a healthy peer in this busy test process has 0.5 s to answer each ping
pytestmark = pytest.mark.server_config({"limits": {"ws_heartbeat_s": HEARTBEAT_S, "max_connections_per_address": 0}})


def split_frame(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """(opcode, payload, rest) of the first whole server frame in `buffer` (servers never mask), or None."""
    if len(buffer) < 2:
        return None
    length, start = buffer[1] & 0x7F, 2
    if length in (126, 127):
        start = 4 if length == 126 else 10
        if len(buffer) < start:
            return None
        length = int.from_bytes(buffer[2:start], "big")
    if len(buffer) < start + length:
        return None
    return buffer[0] & 0x0F, buffer[start : start + length], buffer[start + length :]


async def first_message(sock: socket.socket, buffer: bytes) -> dict:
    """Read just enough to get the first text frame (the snapshot) out of the raw socket."""
    loop = asyncio.get_running_loop()
    while (frame := split_frame(buffer)) is None:
        data = await loop.sock_recv(sock, 65536)
        assert data, "expected the snapshot, got EOF"
        buffer += data
    opcode, payload, _ = frame
    assert opcode == 0x1, f"expected a text frame first, got opcode {opcode}"
    return json.loads(payload)


async def read_to_end(sock: socket.socket) -> bytes:
    """Everything left in the socket, up to the peer's close (EOF or reset)."""
    loop, received = asyncio.get_running_loop(), b""
    try:
        while data := await loop.sock_recv(sock, 65536):
            received += data
    except ConnectionResetError:
        pass
    return received


async def eventually(check, what: str, timeout_s: float = 15) -> None:
    """Poll `check()` (a bool, or an awaitable of one) until it is true; fail naming `what` after a generous bound."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"expected {what} within {timeout_s} s") from None


async def disconnected_at(server, connection_id: str) -> int | None:
    times = await server.station.store.connection_times(connection_id)
    assert times is not None, f"expected a record of connection {connection_id}"
    return times[1]


async def closed(server, connection_id: str) -> bool:
    return await disconnected_at(server, connection_id) is not None


async def listeners(server) -> int:
    """The channel's listener count as the queue endpoint reports it."""
    status, state = await server.get_json(f"/api/channels/{server.channel}/audio/queue")
    assert status == 200
    return state["listeners"]


async def listeners_are(server, expected: int) -> bool:
    return await listeners(server) == expected


def writer_tasks(connection_id: str) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"ws-writer:{connection_id}" and not t.done()]


async def read_forever(ws: websockets.ClientConnection, into: list[dict]) -> None:
    """A healthy listener: read every message (websockets answers the server's pings as it reads)."""
    async for text in ws:
        into.append(json.loads(text))


async def test_silent_peer_is_closed_and_forgotten_while_a_healthy_listener_stays(server, connect):
    """A peer that never answers pings is closed by the heartbeat: it leaves the hub and the listener count,
    its writer task ends and its connection row gets a closed time; a reading client stays connected."""
    healthy = await connect()
    healthy_id = (await healthy.next("snapshot"))["connection_id"]
    healthy_messages: list[dict] = []
    reader = asyncio.create_task(read_forever(healthy.ws, healthy_messages))
    dead, rest = await raw_websocket(server.ws_url())
    try:
        snapshot = await first_message(dead, rest)
        dead_id = snapshot["connection_id"]
        assert snapshot["type"] == "snapshot" and snapshot["listeners"] == 2
        assert await disconnected_at(server, dead_id) is None
        assert await listeners(server) == 2

        await eventually(lambda: closed(server, dead_id), "the silent peer's connection row to get a closed time")
        await eventually(lambda: listeners_are(server, 1), "the listener count to drop back to 1")
        assert all(listener.connection_id != dead_id for listener in server.app[HUB].listeners[server.channel])
        await eventually(lambda: not writer_tasks(dead_id), "the silent peer's writer task to end")
        async with asyncio.timeout(15):
            await read_to_end(dead)  # returns only once the server has closed its end
    finally:
        dead.close()

    await asyncio.sleep(HEARTBEAT_S * 3)  # several more heartbeats for the healthy one to answer
    assert not reader.done(), "the healthy listener was disconnected"
    await healthy.send({"type": "time_sync", "t0": 1})
    await eventually(lambda: any(m["type"] == "time_sync" for m in healthy_messages), "a time_sync reply")
    assert await disconnected_at(server, healthy_id) is None
    assert await listeners(server) == 1
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)


async def first_ping_at(sock: socket.socket, buffer: bytes) -> float:
    """The loop time at which the first ping frame arrives on the raw socket."""
    loop = asyncio.get_running_loop()
    while True:
        while (frame := split_frame(buffer)) is not None:
            opcode, _, buffer = frame
            if opcode == 0x9:
                return loop.time()
        data = await loop.sock_recv(sock, 65536)
        assert data, "expected a ping, got EOF"
        buffer += data


@pytest.mark.server_config({"limits": {"ws_heartbeat_s": 6, "max_connections_per_address": 0}})
async def test_listeners_are_pinged_at_their_own_times_not_together_on_the_second(server):
    """aiohttp rounds a heartbeat over 5 s up to the whole second, which would ping together, every
    round, everyone who arrived within the same second (thousands in a burst): one long stall.
    Here each listener's pings keep the spacing of its arrival."""
    first, first_rest = await raw_websocket(server.ws_url())
    await asyncio.sleep(0.5)
    second, second_rest = await raw_websocket(server.ws_url())
    try:
        async with asyncio.timeout(30):
            pinged = await asyncio.gather(first_ping_at(first, first_rest), first_ping_at(second, second_rest))
        gap_s = pinged[1] - pinged[0]
        assert 0.15 < gap_s < 0.85, f"expected the pings about 0.5 s apart, as the arrivals were, got {gap_s:.3f} s"
    finally:
        first.close()
        second.close()
