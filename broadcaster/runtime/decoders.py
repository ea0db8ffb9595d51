"""Turns at decoding tracks: a few at once, server-wide, however many uploads arrive.

Each decode is an ffmpeg that may use a core and up to [music] decode_memory_mb for minutes;
a burst of uploads must not start one per upload. An upload waits a bounded time for a turn
and is then refused with 503 and Retry-After; the auto-DJ, which has nobody waiting on it,
waits as long as it takes. One channel holds at most half the turns (at least one), so that a
producer uploading a pile of long files cannot keep other channels, their auto-DJ included,
from decoding anything.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from broadcaster.errors import RateLimited, ServerStopping

RETRY_AFTER_S = 10


class DecodersBusy(RateLimited):
    status = 503
    code = "decoders_busy"


class Decoders:
    def __init__(self, size: int, wait_s: float, on_change: Callable[[int, int], None] = lambda running, waiting: None):
        self.size, self.wait_s = size, wait_s
        self.share = max(1, size // 2)  # turns one channel may hold at once
        self.running = self.waiting = 0
        self._slots = asyncio.Semaphore(size)
        self._shares: dict[str, asyncio.Semaphore] = {}
        self._on_change = on_change
        self._holders: set[asyncio.Task] = set()  # decoding or waiting to
        self.closing = False

    @contextlib.asynccontextmanager
    async def turn(self, channel: str = "", patient: bool = False) -> AsyncIterator[None]:
        """Hold one of the decoding slots for `channel`; raises DecodersBusy if none frees up within wait_s."""
        task = asyncio.current_task()
        self._holders.add(task)
        share = self._shares.setdefault(channel, asyncio.Semaphore(self.share))
        try:
            await self._acquire(share, None if patient else self.wait_s)
            self.running += 1
            self._changed()
            try:
                yield
            finally:
                self.running -= 1
                self._slots.release()
                share.release()
                self._changed()
        except asyncio.CancelledError:
            if self.closing:  # an answer for the client rather than a dropped connection
                raise ServerStopping(
                    "the server is shutting down; send the track again once it is back", RETRY_AFTER_S
                ) from None
            raise
        finally:
            self._holders.discard(task)

    def cancel_all(self) -> None:
        """At shutdown: stop every decode and every wait for one, rather than wait minutes for them."""
        self.closing = True
        for task in self._holders:
            task.cancel()

    async def _acquire(self, share: asyncio.Semaphore, wait_s: float | None) -> None:
        self.waiting += 1
        self._changed()
        try:
            async with asyncio.timeout(wait_s):
                await share.acquire()
                try:
                    await self._slots.acquire()
                except BaseException:
                    share.release()
                    raise
        except TimeoutError:
            raise DecodersBusy(
                f"expected a free decoder within {self.wait_s:g} s, but none came free (the server has {self.size}, "
                f"a channel may use {self.share} at once); try again shortly",
                RETRY_AFTER_S,
            ) from None
        finally:
            self.waiting -= 1
            self._changed()

    def _changed(self) -> None:
        self._on_change(self.running, self.waiting)
