"""The fan-out writes pre-built frames straight to each connection's transport while the socket keeps up,
and goes through aiohttp's `send_frame` while it has a backlog: real clients read the same messages, in
order, once each, whichever way each went."""

import asyncio
import json
import socket

import aiohttp
import pytest
import websockets
from aiohttp import web

from web.fanout import Listener, wire
from web.keys import HUB

SIZES = (0, 1, 125, 126, 65535, 65536, 70_000)  # each side of the 7-bit, 16-bit and 64-bit lengths


@pytest.fixture
async def wired_server():
    """An aiohttp server whose handler writes `wire()` of one message of each size, then closes."""
    messages = [bytes([ord("a") + n]) * size for n, size in enumerate(SIZES)]

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        request.transport.write(wire(messages[:3]))  # a step of several frames in one write
        for message in messages[3:]:
            request.transport.write(wire([message]))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/ws", messages
    await runner.cleanup()


async def test_frames_built_by_wire_are_what_websocket_clients_read(wired_server):
    """websockets and aiohttp's client each read every size as one text message, then the close."""
    url, messages = wired_server
    async with websockets.connect(url, max_size=None) as ws:
        assert [(await ws.recv()).encode() for _ in messages] == messages
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        received = [await ws.receive() for _ in messages]
        assert [(msg.type, msg.data.encode()) for msg in received] == [(aiohttp.WSMsgType.TEXT, m) for m in messages]
        assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE


@pytest.mark.server_config({"limits": {"ws_send_queue": 4096, "ws_socket_buffer_bytes": 4096}})
async def test_a_listener_that_falls_behind_and_catches_up_gets_every_message_once_in_order(server):
    """A client stops reading: the server's writes fill the kernel's buffers, then the transport's, and
    later messages wait in the listener's line behind aiohttp's send. It reads again, the line drains,
    and the fan-out writes straight to its transport once more. It has every message once, in order."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
    client = await websockets.connect(server.ws_url(), sock=sock, max_queue=1)
    assert json.loads(await client.recv())["type"] == "snapshot"
    hub = server.app[HUB]
    async with asyncio.timeout(10):
        while hub.count(server.channel) != 1:
            await asyncio.sleep(0.01)
    (listener,) = hub.listeners[server.channel]
    client.transport.pause_reading()
    padding = "x" * 2000
    sent = 0

    def broadcast(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            hub.broadcast(server.channel, {"type": "probe", "n": sent, "padding": padding})
            sent += 1

    broadcast(3)
    async with asyncio.timeout(10):
        while listener.writer is None:  # a backlog: the next send had to wait
            broadcast(1)
            await asyncio.sleep(0.01)
    broadcast(20)
    assert listener.backlog > 1, "later messages wait in the line behind the send that waits"
    client.transport.resume_reading()
    received = []
    async with asyncio.timeout(30):
        while len(received) < sent:
            message = json.loads(await client.recv())
            if message["type"] == "probe":
                received.append(message["n"])
    assert listener.writer is None and listener.transport.get_write_buffer_size() == 0
    broadcast(5)  # straight to the transport again
    async with asyncio.timeout(10):
        while len(received) < sent:
            message = json.loads(await client.recv())
            if message["type"] == "probe":
                received.append(message["n"])
    assert received == list(range(sent))
    assert hub.dropped_total == 0
    await client.close()


class RecordingTransport:
    """A transport stand-in: what was written, and the buffer's state that decides the way of a send."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class RecordingSocket:
    def __init__(self) -> None:
        self.closed = False
        self.frames: list[bytes] = []

    async def send_frame(self, data: bytes, opcode) -> None:
        self.frames.append(data)


def test_a_send_goes_straight_to_the_transport_only_when_nothing_waits_there():
    """An empty buffer: the step's frames in one write. A backlog, a transport closing, a socket closed:
    aiohttp's send_frame, frame by frame (which refuses a closed socket itself)."""
    transport, ws = RecordingTransport(), RecordingSocket()
    listener = Listener(ws, "c1", "table", 8, transport=transport)
    assert listener.offer_all((b"one", b"two"))
    assert transport.written == [wire([b"one", b"two"])] and ws.frames == []
    for state in ("buffered", "closing", "closed"):
        transport.buffered, transport.closing, ws.closed = state == "buffered", state == "closing", state == "closed"
        assert listener.offer(state.encode())
    assert transport.written == [wire([b"one", b"two"])]
    assert ws.frames == [b"buffered", b"closing", b"closed"]
