"""Fan-out to WebSocket listeners that never waits on the slowest one.

A broadcast is serialized once, and framed once: the same bytes go to every listener. To a
connection with nothing waiting in its transport's buffer they are written at once, in one
`Transport.write` (the asyncio transport aiohttp itself writes to): the frames are
what aiohttp's `send_frame` would write (uncompressed frames are valid with or without
permessage-deflate), and a step's frames go in one write. That costs about a quarter less a
socket than a `send_frame` each (7.6 against 10.2 µs, `bench/sendcost.py`, 2026-12-08). Anything
else goes through aiohttp's `send_frame`, started on the spot and run up to its first suspension
(as `asyncio.eager_task_factory` does from Python 3.12 on: a task per listener per broadcast
would cost about twice the send). Only a send that must wait (the socket's buffer is full and
aiohttp waits for it to drain) becomes a task, and that listener's later messages wait in its
bounded line behind it, sent in order by that task. A listener whose line is full is too slow
to keep up: it is dropped (closed with TOO_SLOW), so it cannot hold back the rest, and it
reconnects to a fresh snapshot.

All the messages of one channel step go to a listener together or not at all, so a listener
never sees half a step. A listener that asked for batches (`?batch=1`) gets a step of several
messages as one, so one send carries it even through `send_frame`: for messages under 1 KB,
as measured, a send costs about the same whatever its size (the kernel's send dominates).
"""

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiohttp import WSMsgType, web

from broadcaster.runtime.telemetry import Telemetry

log = logging.getLogger(__name__)

TOO_SLOW = 4008  # application close code: the listener fell too far behind
REPLY_WAIT_S = 10
SEND_FAILED = (ConnectionError, RuntimeError)  # the connection is closing; its reader will find out


def started(coro: Coroutine) -> asyncio.Task | None:
    """Run `coro` now, up to its first suspension: None if it finished (its error, if any, raised
    here), else a task that carries it on from there."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_carry_on(coro, waiting))


async def _carry_on(coro: Coroutine, waiting: Any) -> None:
    """What a task does with a coroutine that yielded `waiting`: resume it when that is done."""
    while True:
        if waiting is None:  # a bare yield (sleep(0)): give the loop one turn
            await asyncio.sleep(0)
        else:
            await asyncio.wait([waiting])
        try:
            waiting = coro.send(None)  # it reads the awaited future's result (or error) itself
        except StopIteration:
            return


def frame(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def wire(messages: Sequence[bytes]) -> bytes:
    """The messages as a server puts them on the connection (RFC 6455 section 5.2): each one final,
    unmasked text frame."""
    return b"".join(_header(len(message)) + message for message in messages)


def _header(size: int) -> bytes:
    if size < 126:
        return bytes((0x81, size))
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size)
    return struct.pack("!BBQ", 0x81, 127, size)


def batch(frames: list[bytes]) -> bytes:
    """One message that carries encoded messages in order (docs/protocol.md, "Batches"), made from
    their encodings: what `frame({"type": "batch", "messages": [...]})` would give."""
    return b'{"type": "batch", "messages": [' + b", ".join(frames) + b"]}"


class Listener:
    """One WebSocket's share of the fan-out: messages sent at once while its socket keeps up, else
    waiting in a bounded line behind the send that had to wait."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        connection_id: str,
        channel: str,
        queue_size: int,
        counted: bool = True,
        batched: bool = False,
        transport: asyncio.Transport | None = None,
    ):
        self.ws = ws
        self.transport = transport  # the connection's (request.transport): None sends through `ws` alone
        self.connection_id = connection_id
        self.channel = channel
        self.counted = counted
        self.batched = batched  # a step of several messages goes as one batch
        self.limit = queue_size
        self.pending: deque[bytes] = deque()  # messages waiting behind a send that had to wait
        self.dropped = False  # by the hub: nothing more is queued
        self.gone = False  # a send failed: the connection is closing, and its reader will find out
        self.writer: asyncio.Task | None = None  # while a send waits: finishes it, then sends the line
        self._room: asyncio.Event | None = None  # a reply waiting for room in a full line
        self.sync_reported_ms = -(10**12)  # when its page last reported how well it keeps in step

    @property
    def backlog(self) -> int:
        """Messages not yet written to the socket (the one being sent included)."""
        return len(self.pending) + (self.writer is not None)

    def offer(self, data: bytes) -> bool:
        """Send or queue one encoded message; False if the line is full (the listener is too slow)."""
        return self.offer_all((data,))

    def offer_all(self, frames: Sequence[bytes], wired: bytes | None = None) -> bool:
        """Send or queue the messages, all of them or none; False if they do not fit (the listener is
        too slow). `wired`: `wire(frames)`, when the caller made it once for many listeners. A listener
        that was dropped or whose connection is going takes nothing, and is not too slow."""
        if self.dropped or self.gone:
            return True
        if self.writer is not None:
            if self.limit - len(self.pending) < len(frames):
                return False
            self.pending.extend(frames)
            return True
        if self._takes_at_once():
            self.transport.write(wire(frames) if wired is None else wired)
            return True
        for index, data in enumerate(frames):
            try:
                waiting = started(self.ws.send_frame(data, WSMsgType.TEXT))
            except SEND_FAILED:
                self.gone = True
                return True
            except Exception:  # one listener's surprise must not cut the broadcast to the others short
                log.exception("listener %s: a send failed unexpectedly", self.connection_id)
                self.gone = True
                return True
            if waiting is not None:
                self.pending.extend(frames[index + 1 :])
                self.writer = asyncio.ensure_future(self._drain(waiting))
                return True
        return True

    def _takes_at_once(self) -> bool:
        """Open, with nothing waiting in its transport's buffer: a write goes to the socket now, in
        order with aiohttp's own frames (pings, pongs, the close), which go through the same buffer.
        A backlog, or a close under way, is left to aiohttp's `send_frame`."""
        transport = self.transport
        return (
            transport is not None
            and not self.ws.closed
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
        )

    def send(self, payload: dict[str, Any]) -> bool:
        return self.offer(frame(payload))

    async def reply(self, payload: dict[str, Any]) -> bool:
        """Answer this client's own message: at once with nothing ahead of it (a time_sync answer that
        waited its turn would skew the client's clock estimate), else in its turn. Waiting for room
        slows down only this client's reading, so a client that floods us gets every answer, just
        later. False if it stopped reading its answers."""
        data = frame(payload)
        try:
            async with asyncio.timeout(REPLY_WAIT_S):
                while self.writer is not None and len(self.pending) >= self.limit:
                    self._room = self._room or asyncio.Event()
                    await self._room.wait()
        except TimeoutError:
            return False
        return self.offer(data)

    async def _drain(self, waiting: asyncio.Future) -> None:
        """Finish the send that had to wait, then send the line in order, waiting as the socket asks."""
        pending = self.pending
        try:
            await waiting
            while pending:
                await self.ws.send_frame(pending.popleft(), WSMsgType.TEXT)
                if self._room is not None:
                    self._room.set()
                    self._room = None
        except SEND_FAILED:
            self.gone = True
            pending.clear()
        finally:
            self.writer = None
            if self._room is not None:
                self._room.set()
                self._room = None

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.cancel()
            # Dropping our reference: the cancelled task's traceback refers back to us, a cycle that
            # would otherwise keep this listener until the next full collection.
            await asyncio.gather(writer, return_exceptions=True)
        if not self.ws.closed:
            with contextlib.suppress(*SEND_FAILED):
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
        """Send messages, in order, to every listener of the channel: each is serialized and encoded
        once (and several once more as a batch); a listener whose line cannot take them all is dropped."""
        group = self.listeners.get(channel)
        if not payloads or not group:
            return
        began = time.perf_counter()
        frames = [frame(payload) for payload in payloads]
        batched = [batch(frames)] if len(frames) > 1 else frames
        plain = (frames, wire(frames))
        one = (batched, wire(batched)) if len(frames) > 1 else plain
        too_slow = [
            listener for listener in list(group) if not listener.offer_all(*(one if listener.batched else plain))
        ]
        for listener in too_slow:
            self.drop(listener, TOO_SLOW, b"too slow: send queue full")
        self.metrics.broadcast_took(time.perf_counter() - began)

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
