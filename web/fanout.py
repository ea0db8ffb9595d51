"""Fan-out to WebSocket listeners that never waits on the slowest one.

A broadcast is serialized once: the same text goes on every listener's own
bounded queue, and each listener's writer task sends what is on its queue, in
order, with aiohttp's `send_str`, at the pace its socket takes it. Handing a
message to a thousand listeners is a thousand queue puts; no listener's
socket is touched while the others wait. A listener whose queue is full is
too slow to keep up: it is dropped (closed with TOO_SLOW), so it cannot hold
back the rest, and it reconnects to a fresh snapshot.

All the messages of one channel step go on a queue together or not at all,
so a listener never sees half a step.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from broadcaster.runtime.telemetry import Telemetry

log = logging.getLogger(__name__)

TOO_SLOW = 4008  # application close code: the listener fell too far behind
REPLY_WAIT_S = 10


class Listener:
    """One WebSocket's share of the fan-out: a bounded queue of serialized messages and the task that
    sends them."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        connection_id: str,
        channel: str,
        queue_size: int,
        counted: bool = True,
    ):
        self.ws = ws
        self.connection_id = connection_id
        self.channel = channel
        self.counted = counted
        self.queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self.backlog = 0  # messages on the queue or being sent by the writer task
        self.dropped = False  # by the hub: nothing more is queued
        self.gone = False  # a send failed: the connection is closing, and its reader will find out
        self.writer: asyncio.Task | None = asyncio.create_task(self._write(), name=f"ws-writer:{connection_id}")

    def offer(self, text: str) -> bool:
        """Queue one message; False if the queue is full (the listener is too slow)."""
        return self.offer_all((text,))

    def offer_all(self, texts: list[str] | tuple[str, ...]) -> bool:
        """Queue the messages, all of them or none; False if they do not fit (the listener is too slow).
        A listener that was dropped or whose connection is going takes nothing, and is not too slow."""
        if self.dropped or self.gone:
            return True
        queue = self.queue
        if queue.maxsize - queue.qsize() < len(texts):
            return False
        for text in texts:
            queue.put_nowait(text)
        self.backlog += len(texts)
        return True

    def send(self, payload: dict[str, Any]) -> bool:
        return self.offer(json.dumps(payload))

    async def reply(self, payload: dict[str, Any]) -> bool:
        """Answer this client's own message. With nothing ahead of it, it is sent at once (a time_sync
        answer that waited its turn behind other writer tasks would skew the client's clock estimate);
        else it waits its turn in the queue. Waiting for room there slows down only this client's
        reading, so a client that floods us gets every answer, just later. False if it stopped reading
        its answers."""
        text = json.dumps(payload)
        if self.dropped or self.gone:
            return True
        if not self.backlog:
            # An uncompressed send writes the frame before it first yields: nothing can pass it.
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(text)
            return True
        try:
            async with asyncio.timeout(REPLY_WAIT_S):
                await self.queue.put(text)
        except TimeoutError:
            return False
        self.backlog += 1  # no await since the put: the writer task cannot have taken it yet
        return True

    async def _write(self) -> None:
        queue, send = self.queue, self.ws.send_str
        while True:
            text = await queue.get()
            try:
                await send(text)
            except (ConnectionError, RuntimeError):
                self.gone = True
                return
            finally:
                self.backlog -= 1

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.cancel()
            # Dropping our reference: the cancelled task's traceback refers back to us, a cycle that
            # would otherwise keep this listener until the next full collection.
            await asyncio.gather(writer, return_exceptions=True)
        if not self.ws.closed:
            await self.ws.close(code=code, message=message)


COUNT_DELAY_S = 0.5  # listener counts are announced at most twice a second per channel


class Hub:
    def __init__(self, metrics: Telemetry | None = None) -> None:
        self.listeners: dict[str, set[Listener]] = {}
        self.metrics = metrics or Telemetry()
        self.dropped_total = 0
        self.departed = 0  # listeners and consoles that have left, since start-up
        self._closing: set[asyncio.Task] = set()
        self._count_pending: set[str] = set()
        self._counted: dict[str, int] = {}  # listeners (not consoles) per channel, kept as they come and go
        self.others: Callable[[str], int] = lambda channel: 0  # in a cluster: listeners on the other processes

    def add(self, listener: Listener) -> None:
        channel = listener.channel
        group = self.listeners.setdefault(channel, set())
        if listener not in group:
            group.add(listener)
            self._counted[channel] = self.count(channel) + listener.counted
        self._count_changed(channel)

    def remove(self, listener: Listener) -> None:
        channel = listener.channel
        group = self.listeners.get(channel, set())
        if listener in group:
            group.discard(listener)
            self.departed += 1
            self._counted[channel] -= listener.counted
            self._count_changed(channel)

    def _count_changed(self, channel: str) -> None:
        """Coalesce joins and leaves: a burst of a thousand connections is one message, not a million."""
        if channel in self._count_pending:
            return
        self._count_pending.add(channel)
        asyncio.get_running_loop().call_later(COUNT_DELAY_S, self._announce_count, channel)

    def _announce_count(self, channel: str) -> None:
        self._count_pending.discard(channel)
        self.broadcast(channel, {"type": "listeners_changed", "listeners": self.total(channel)})

    def others_changed(self, channel: str) -> None:
        """Listeners came or went on other processes: tell this one's listeners the new total."""
        self._count_changed(channel)

    def audience(self) -> tuple[int, int]:
        """Sockets connected now (listeners and consoles, every channel), and how many have left."""
        return sum(len(group) for group in self.listeners.values()), self.departed

    def count(self, channel: str) -> int:
        """Listeners (not consoles) connected to the channel here."""
        return self._counted.get(channel, 0)

    def total(self, channel: str) -> int:
        """Listeners (not consoles) of the channel on every process (here alone outside a cluster)."""
        return self.count(channel) + self.others(channel)

    def broadcast(self, channel: str, *payloads: dict[str, Any]) -> None:
        """Queue messages, in order, for every listener of the channel: each is serialized once, and
        a listener whose queue cannot take them all is dropped."""
        group = self.listeners.get(channel)
        if not payloads or not group:
            return
        started = time.perf_counter()
        texts = [json.dumps(payload) for payload in payloads]
        too_slow = [listener for listener in group if not listener.offer_all(texts)]
        for listener in too_slow:
            self.drop(listener, TOO_SLOW, b"too slow: send queue full")
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
