"""Fan-out to WebSocket listeners that never waits on the slowest one.

A broadcast is serialized once, and framed once: the same bytes go to every
listener (all the messages of one channel step together, in one write).
Listeners with nothing waiting to be sent get them straight on their sockets,
many sockets at once (web/sendmany.py). A listener with a little buffered in
its transport gets them appended there; one whose writer task is busy gets
them on its bounded queue, which that task drains at the socket's pace. A
listener whose queue is full is too slow to keep up and is disconnected, so it
cannot delay the rest.

Which listeners may be written straight is known before a broadcast, not
tested one by one during it (with thousands, the tests took a fifth of the
broadcast): each channel keeps its listeners in two groups. A listener moves
from "direct" to "queued" the moment something may wait ahead of new bytes:
a message on its queue, or a write through its transport (ours, or aiohttp's
pings and close frame) that left bytes buffered or came after the close. At
each broadcast the queued ones are tested, and those that caught up move back.
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from broadcaster.runtime.telemetry import Telemetry

from .sendmany import LOST, SocketWriter

log = logging.getLogger(__name__)

TOO_SLOW = 4008  # application close code: the listener fell too far behind
CUT = 1011  # a fan-out helper failed mid-write: the stream may hold part of a message
REPLY_WAIT_S = 10


def text_frame(text: str) -> bytes:
    """One unmasked, uncompressed, final WebSocket text frame (RFC 6455 section 5.2), as a server sends it."""
    data = text.encode()
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + data


def _plain_socket_fd(transport: asyncio.Transport | None) -> int:
    """The socket under a plain TCP transport; -1 where bytes must go through the transport (TLS)."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


def _unwatched(listener: "Listener") -> None:
    pass


class Listener:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        connection_id: str,
        channel: str,
        queue_size: int,
        counted: bool = True,
        transport: asyncio.Transport | None = None,
        buffer_limit: int = 65536,
    ):
        self.ws = ws
        self.transport = transport  # None: every message goes through the queue
        self.fd = _plain_socket_fd(transport)  # written directly only while the transport is idle
        self.key = 0  # the socket's key with the hub's SocketWriter; 0 while not attached
        self.buffer_limit = buffer_limit
        self.backlog = 0  # messages queued for the writer task or being written by it
        self.counted = counted
        self.connection_id = connection_id
        self.channel = channel
        self.queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self.dropped = False
        # Called when something may now wait ahead of new bytes (set by the hub while it holds us).
        self.on_queued: Callable[[Listener], None] = _unwatched
        self.watched = self._watch_transport()
        self.writer = asyncio.create_task(self._write(), name=f"ws-writer:{connection_id}")

    def _watch_transport(self) -> bool:
        """See every write that goes through the transport, whoever makes it: one that leaves bytes
        in its buffer, or follows the close frame, means new bytes may no longer skip past it.
        False where the transport's `write` cannot be wrapped (then the hub tests us every time)."""
        transport = self.transport
        if transport is None or self.fd < 0:
            return False
        write = transport.write

        def watched_write(data: bytes) -> None:
            write(data)
            if transport.get_write_buffer_size() or self.ws.closed:
                self.on_queued(self)

        try:
            transport.write = watched_write
        except AttributeError:
            return False
        return True

    def _unwatch_transport(self) -> None:
        """The wrapper refers to us and we to the transport: a cycle, broken when we are done. Until
        the hub lets us go, it tests us before each broadcast (no close frame goes out unseen)."""
        self.on_queued(self)
        if self.watched:
            self.watched = False
            del self.transport.write
        self.on_queued = _unwatched

    def offer(self, text: str) -> bool:
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        self.backlog += 1
        self.on_queued(self)
        return True

    def idle(self) -> bool:
        """Nothing is waiting to be sent to this listener, so new bytes may go straight to its socket.
        (Checked for thousands of listeners per broadcast: plain attributes first.)"""
        transport = self.transport
        return (
            self.key
            and not self.backlog
            and not self.dropped
            and not self.ws.closed
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
        )

    def take_rest(self, frames: bytes, sent: int) -> None:
        """The socket took only `sent` bytes of a direct write (-1: the connection broke, and its reader
        will find out); the transport sends the rest once the socket drains."""
        if sent >= 0:
            self.transport.write(memoryview(frames)[sent:])

    def offer_frames(self, texts: list[str], frames: bytes) -> bool:
        """Write the framed messages now if nothing is ahead of them and the socket keeps up; else
        queue them (False if they do not all fit: the listener is too slow)."""
        if self.dropped:
            return False
        transport = self.transport
        if (
            transport is not None
            and not self.backlog
            and not self.ws.closed
            and not transport.is_closing()
            and transport.get_write_buffer_size() < self.buffer_limit
        ):
            transport.write(frames)
            return True
        if self.queue.maxsize - self.queue.qsize() < len(texts):
            return False
        return all(self.offer(text) for text in texts)

    def send(self, payload: dict[str, Any]) -> bool:
        return self.offer(json.dumps(payload))

    async def reply(self, payload: dict[str, Any]) -> bool:
        """Answer this client's own message: straight to the socket when nothing waits ahead of it,
        else through the queue. Waiting for room there slows down only this client's reading, so a
        client that floods us gets every answer, just later."""
        text = json.dumps(payload)
        if self.idle():
            self.transport.write(text_frame(text))
            return True
        try:
            async with asyncio.timeout(REPLY_WAIT_S):
                await self.queue.put(text)
        except TimeoutError:
            return False  # it stopped reading its answers
        self.backlog += 1  # no await since the put: the writer task cannot have taken it yet
        self.on_queued(self)
        return True

    async def _write(self) -> None:
        while True:
            text = await self.queue.get()
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return
            finally:
                self.backlog -= 1

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        self._unwatch_transport()
        writer = self.writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self.writer = None  # the cancelled task's traceback refers to us: a cycle left to the collector
        if not self.ws.closed:
            await self.ws.close(code=code, message=message)


COUNT_DELAY_S = 0.5  # listener counts are announced at most twice a second per channel


class Hub:
    def __init__(self, metrics: Telemetry | None = None, writer: SocketWriter | None = None) -> None:
        self.listeners: dict[str, set[Listener]] = {}
        # Each channel's listeners, split: those written straight (with their keys) and the rest.
        self._direct: dict[str, dict[Listener, int]] = {}
        self._queued: dict[str, set[Listener]] = {}
        self.writer = writer or SocketWriter()
        self.metrics = metrics or Telemetry()
        self.dropped_total = 0
        self.departed = 0  # listeners and consoles that have left, since start-up
        self._closing: set[asyncio.Task] = set()
        self._count_pending: set[str] = set()
        self._counted: dict[str, int] = {}  # listeners (not consoles) per channel, kept as they come and go

    def add(self, listener: Listener) -> None:
        channel = listener.channel
        if listener.fd >= 0 and not listener.transport.is_closing():  # closing: its fd may be gone already
            listener.key = self.writer.attach(listener.fd)
        group = self.listeners.setdefault(channel, set())
        if listener not in group:
            group.add(listener)
            self._counted[channel] = self.count(channel) + listener.counted
            self._queued.setdefault(channel, set()).add(listener)  # the next broadcast tests it
            self._direct.setdefault(channel, {})
            if listener.watched:
                listener.on_queued = self._queue
        self._count_changed(channel)

    def remove(self, listener: Listener) -> None:
        channel = listener.channel
        listener.on_queued = _unwatched
        self._direct.get(channel, {}).pop(listener, None)
        self._queued.get(channel, set()).discard(listener)
        if listener.key:  # our duplicate of its socket would keep the connection open
            self.writer.detach(listener.key)
            listener.key = 0
        group = self.listeners.get(channel, set())
        if listener in group:
            group.discard(listener)
            self.departed += 1
            self._counted[channel] -= listener.counted
            self._count_changed(channel)

    def _queue(self, listener: Listener) -> None:
        """Something may wait ahead of new bytes for this listener: stop writing it straight."""
        if self._direct[listener.channel].pop(listener, None) is not None:
            self._queued[listener.channel].add(listener)

    def _sort(self, channel: str) -> tuple[list[Listener], list[int], list[Listener]]:
        """The listeners to write straight, their keys, and the rest. Queued listeners that caught up
        (and are watched, so we will hear if they fall behind again) go back to writing straight."""
        direct, queued = self._direct.get(channel), self._queued.get(channel)
        if direct is None or queued is None:
            return [], [], []
        back, once, busy = [], [], []
        for listener in queued:
            if not listener.idle():
                busy.append(listener)
            else:
                (back if listener.watched else once).append(listener)
        for listener in back:
            queued.discard(listener)
            direct[listener] = listener.key
        return [*direct, *once], [*direct.values(), *(listener.key for listener in once)], busy

    def _count_changed(self, channel: str) -> None:
        """Coalesce joins and leaves: a burst of a thousand connections is one message, not a million."""
        if channel in self._count_pending:
            return
        self._count_pending.add(channel)
        asyncio.get_running_loop().call_later(COUNT_DELAY_S, self._announce_count, channel)

    def _announce_count(self, channel: str) -> None:
        self._count_pending.discard(channel)
        self.broadcast(channel, {"type": "listeners_changed", "listeners": self.count(channel)})

    def audience(self) -> tuple[int, int]:
        """Sockets connected now (listeners and consoles, every channel), and how many have left."""
        return sum(len(group) for group in self.listeners.values()), self.departed

    def count(self, channel: str) -> int:
        """Listeners (not consoles) connected to the channel."""
        return self._counted.get(channel, 0)

    def broadcast(self, channel: str, *payloads: dict[str, Any]) -> None:
        """Send messages, in order, to every listener of the channel: each is serialized and framed
        once, and a listener that keeps up gets all of them in a single write."""
        if not payloads:
            return
        started = time.perf_counter()
        texts = [json.dumps(payload) for payload in payloads]
        frames = b"".join(text_frame(text) for text in texts)
        direct, keys, busy = self._sort(channel)
        for index, sent in self.writer.write(frames, keys):
            if sent == LOST:
                self.drop(direct[index], CUT, b"server error: a message was cut short; reconnect")
            else:
                direct[index].take_rest(frames, sent)
        for listener in busy:
            if not listener.offer_frames(texts, frames):
                self.drop(listener, TOO_SLOW, b"too slow: send queue full")
        if direct or busy:
            self.metrics.broadcast_took(time.perf_counter() - started)

    def drop(self, listener: Listener, code: int, reason: bytes, quiet: bool = False) -> None:
        """Stop sending to the listener at once and close it with `code` (quiet: the caller logs it)."""
        if listener.dropped:
            return
        listener.dropped = True
        if code == TOO_SLOW:
            self.dropped_total += 1
            self.metrics.dropped_consumer("websocket")
        self.remove(listener)
        if not quiet:
            log.warning("listener %s on %s dropped: %s", listener.connection_id, listener.channel, reason.decode())
        task = asyncio.create_task(listener.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self) -> None:
        everyone = [one for group in self.listeners.values() for one in group]
        await asyncio.gather(*(one.close(1001, b"server shutting down") for one in everyone), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        self.writer.close()
