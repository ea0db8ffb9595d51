"""A listener is written directly only when nothing sent through its writer task is still on the way."""

import asyncio

from web.fanout import Listener


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str):
        return None  # no plain socket: direct writes go through the transport

    def write(self, data: bytes) -> None:
        self.written.append(data)


class SlowSocket:
    """A WebSocket whose sends finish only when the test says so."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.release = asyncio.Event()

    async def send_str(self, text: str) -> None:
        await self.release.wait()
        self.sent.append(text)

    async def close(self, code: int, message: bytes) -> None:
        self.closed = True


async def test_messages_with_the_writer_task_keep_new_ones_behind_them_until_all_are_written():
    ws, transport = SlowSocket(), FakeTransport()
    listener = Listener(ws, "c1", "table", queue_size=8, transport=transport)
    listener.key = 1
    try:
        assert listener.idle()
        assert listener.send({"n": 1})
        await asyncio.sleep(0)  # the writer task takes it and waits in send_str
        assert listener.queue.empty() and not listener.idle(), "taken from the queue, but not yet written"
        assert listener.send({"n": 2})
        assert listener.offer_frames(['{"n": 3}'], b"frame 3")
        assert transport.written == [], "queued behind the two, not written past them"
        ws.release.set()
        async with asyncio.timeout(10):
            while len(ws.sent) < 3:
                await asyncio.sleep(0)
        assert ws.sent == ['{"n": 1}', '{"n": 2}', '{"n": 3}']
        await asyncio.sleep(0)
        assert listener.idle() and listener.backlog == 0
        assert listener.offer_frames(['{"n": 4}'], b"frame 4") and transport.written == [b"frame 4"]
        assert await listener.reply({"n": 5}) and transport.written[-1] == b'\x81\x08{"n": 5}', (
            "nothing ahead of it: an answer goes straight out"
        )
        ws.release.clear()
        assert listener.send({"n": 6})
        await asyncio.sleep(0)
        assert await listener.reply({"n": 7}) and listener.backlog == 2, "else it waits its turn in the queue"
        assert transport.written[-1] == b'\x81\x08{"n": 5}'
    finally:
        await listener.close()
