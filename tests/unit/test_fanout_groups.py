"""Which listeners a broadcast writes straight to their sockets is kept up to date as things happen,
not tested per listener per broadcast; whatever may wait ahead of new bytes keeps them behind it.

Real sockets and asyncio transports (one end of a socket pair each); the WebSocket is a stand-in
that only says whether it is closed and records what its writer task sends."""

import asyncio
import socket

import pytest

from web.fanout import Hub, Listener


class StandInSocket:
    def __init__(self) -> None:
        self.closed = False
        self.sent: list[str] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(text)

    async def close(self, code: int, message: bytes) -> None:
        self.closed = True


class Pair:
    """A listener on our end of a socket pair; `peer` is the client's end."""

    def __init__(self, transport: asyncio.Transport, peer: socket.socket, listener: Listener):
        self.transport, self.peer, self.listener = transport, peer, listener

    def received(self) -> bytes:
        data = b""
        while True:
            try:
                more = self.peer.recv(1 << 20)
            except BlockingIOError:
                return data
            if not more:
                return data
            data += more


@pytest.fixture
async def pairs():
    made: list[Pair] = []
    hub = Hub()

    async def make(count: int, sndbuf: int = 0) -> list[Pair]:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            ours, peer = socket.socketpair()
            peer.setblocking(False)
            if sndbuf:
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
            listener = Listener(StandInSocket(), f"c{len(made)}", "table", queue_size=8, transport=transport)
            hub.add(listener)
            made.append(Pair(transport, peer, listener))
        return made[-count:]

    yield hub, make
    for pair in made:
        hub.remove(pair.listener)
        await pair.listener.close()
        pair.transport.abort()
        pair.peer.close()
    hub.writer.close()


def direct(hub: Hub) -> set[str]:
    return {listener.connection_id for listener in hub._direct.get("table", {})}


async def test_listeners_keeping_up_are_written_straight_without_being_tested(pairs, monkeypatch):
    hub, make = pairs
    group = await make(20)
    hub.broadcast("table", {"n": 1})  # each is tested once, on joining
    assert direct(hub) == {pair.listener.connection_id for pair in group}
    tested = []
    monkeypatch.setattr(Listener, "idle", lambda self: tested.append(self) or True)
    hub.broadcast("table", {"n": 2})
    assert tested == [], "nothing happened to them since: nothing to test"
    assert all(pair.received() == b'\x81\x08{"n": 1}\x81\x08{"n": 2}' for pair in group)


async def test_bytes_left_in_a_transport_keep_later_broadcasts_behind_them_until_they_drain(pairs):
    hub, make = pairs
    (slow, fast) = await make(2, sndbuf=4096)
    hub.broadcast("table", {"n": 1})
    assert slow.received() == fast.received() == b'\x81\x08{"n": 1}'
    big = b"\x82\x7f" + (1 << 20).to_bytes(8, "big") + b"x" * (1 << 20)  # a binary frame aiohttp might write
    slow.transport.write(big)
    assert slow.transport.get_write_buffer_size() > 0
    assert direct(hub) == {fast.listener.connection_id}, "the moment bytes were left over, it stopped being direct"
    hub.broadcast("table", {"n": 2})
    assert fast.received() == b'\x81\x08{"n": 2}'
    received = b""
    async with asyncio.timeout(10):
        while slow.transport.get_write_buffer_size() or slow.listener.backlog:
            received += slow.received()
            await asyncio.sleep(0.001)
    received += slow.received()
    assert received[: len(big)] == big, "the frame in the transport went out whole, nothing cut into it"
    assert slow.listener.ws.sent == ['{"n": 2}'] or received[len(big) :] == b'\x81\x08{"n": 2}'
    hub.broadcast("table", {"n": 3})
    assert direct(hub) == {slow.listener.connection_id, fast.listener.connection_id}, "caught up: direct again"
    assert slow.received() == b'\x81\x08{"n": 3}'


async def test_nothing_goes_straight_out_after_a_close_frame(pairs):
    hub, make = pairs
    (closing,) = await make(1)
    hub.broadcast("table", {"n": 1})
    assert closing.received() == b'\x81\x08{"n": 1}'
    closing.listener.ws.closed = True  # what aiohttp's close() sets before it writes the close frame
    closing.transport.write(b"\x88\x02\x03\xe8")
    hub.broadcast("table", {"n": 2})
    assert closing.received() == b"\x88\x02\x03\xe8"
    assert direct(hub) == set()


async def test_a_message_on_the_queue_keeps_the_next_broadcast_behind_it(pairs):
    hub, make = pairs
    (pair,) = await make(1)
    hub.broadcast("table", {"n": 1})
    assert direct(hub) == {pair.listener.connection_id}
    assert pair.listener.send({"n": 2})  # for the writer task, which has not run yet
    hub.broadcast("table", {"n": 3})
    assert pair.received() == b'\x81\x08{"n": 1}', "not written past the queued message"
    await asyncio.sleep(0.01)
    assert pair.listener.ws.sent == ['{"n": 2}', '{"n": 3}']


async def test_a_listener_that_leaves_is_forgotten_and_its_socket_let_go(pairs):
    hub, make = pairs
    (leaving, staying) = await make(2)
    hub.broadcast("table", {"n": 1})
    hub.remove(leaving.listener)
    await leaving.listener.close()
    assert "write" not in vars(leaving.transport), "the transport is given back as it came"
    leaving.transport.close()
    await asyncio.sleep(0.01)
    hub.broadcast("table", {"n": 2})
    assert leaving.received() == b'\x81\x08{"n": 1}', "and the peer sees the connection end"
    assert staying.received() == b'\x81\x08{"n": 1}\x81\x08{"n": 2}'
    assert direct(hub) == {staying.listener.connection_id}
