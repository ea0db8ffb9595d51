"""A listener that stops reading is dropped after a bounded buffer; the others never wait for it."""

import asyncio
import json
import socket

import pytest
import websockets

from web.keys import HUB, METRICS

pytestmark = pytest.mark.server_config(
    {"limits": {"ws_send_queue": 16, "ws_socket_buffer_bytes": 4096}, "tts": {"tone_delay_ms": 0}}
)

# Long requests make every playback_queue_updated heavy (each carries the queue's texts).
LONG_TEXT = " ".join(f"Sentence number {i} is here to make the queue long and heavy." for i in range(70))


async def stalled_socket(url: str) -> websockets.ClientConnection:
    """A real WebSocket client with a tiny receive buffer that stops reading once connected."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    ws = await websockets.connect(url, sock=sock, max_queue=1)
    ws.transport.pause_reading()
    return ws


async def read_all(listener) -> None:
    while True:
        listener.messages.append(json.loads(await listener.ws.recv()))


async def test_listener_that_stops_reading_is_dropped_and_others_get_everything(server, connect):
    """A stalled listener's bounded queue overflows and it is closed with 4008, while a reading
    listener keeps receiving every announcement in order."""
    healthy = await connect()
    await healthy.next("snapshot")
    slow = await stalled_socket(server.ws_url())
    for _ in range(8):
        assert (await server.say(LONG_TEXT)).status == 202
    # Read everything while waiting for the drop: it may come after the last message for a while.
    reading = asyncio.create_task(read_all(healthy))
    try:
        async with asyncio.timeout(30):
            while server.app[HUB].dropped_total == 0:
                await asyncio.sleep(0.02)
    finally:
        reading.cancel()  # websockets' recv is safe to cancel: nothing is lost
        await asyncio.gather(reading, return_exceptions=True)
    updates = sum(m["type"] == "playback_queue_updated" for m in healthy.messages)
    await healthy.next("playback_queue_updated", timeout=60)  # the next may wait for a request to end
    await healthy.next("playback_queue_updated", timeout=60)
    assert sum(m["type"] == "playback_queue_updated" for m in healthy.messages) == updates + 2
    seqs = [m["seq"] for m in healthy.messages if m["type"] == "audio_chunk_ready"]
    assert seqs == list(range(70))  # the whole first request, nothing lost
    assert server.app[HUB].count(server.channel) == 1
    slow.transport.resume_reading()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(30):
            while True:
                await slow.recv()
    assert closed.value.rcvd.code == 4008
    dropped = server.app[METRICS].registry.get_sample_value(
        "broadcaster_slow_consumers_dropped_total", {"kind": "websocket"}
    )
    assert dropped == 1
