"""Python's cycle collector: its pauses timed, and what outlives a full collection kept out of its way.

The collector runs on whichever thread happens to allocate when a threshold is
crossed, and holds the GIL until it is done, so the event loop stands still
meanwhile. A full collection walks every object the collector tracks, roughly
a microsecond each on a small server. Each WebSocket listener brings about a
hundred of them (aiohttp's request, handler, parser and writer; our queue and
writer task), so with thousands of listeners one full collection is the
longest stall the server has (measured in docs/performance.md).

Every pause is timed into `broadcaster_gc_pause_seconds`, so an operator
sees it. And the server's own process (`broadcaster serve`, never a program
that embeds the app) keeps objects out of the collector's walks with
`HeapFreezer`, as `[server] gc_freeze` says:

- "startup" (the default): the objects made at start-up (modules, classes,
  the schema: some 80 000) are frozen, moved into the permanent generation,
  which no collection walks. They live until exit anyway.
- "survivors": also what survives each full collection, so the next full
  collection walks only what was made since: with thousands of listeners, a
  tenth of the pause. Frozen objects are still freed as soon as nothing refers
  to them, but garbage in reference cycles among them waits for the thaw,
  every `thaw_after_s`: everything is unfrozen and collected once, one
  full-length pause. Listeners that leave leave such cycles (exceptions
  holding their tracebacks), and so does every HTTP request that was in flight
  when a freeze happened; with many chunk fetches (every listener fetches every
  chunk) that is hundreds of thousands of objects in ten minutes, tens of MB
  and a thaw of over a second (docs/performance.md). So it is for large,
  steady audiences, not the default.
"""

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# (generation, seconds) of one finished collection
Observe = Callable[[int, float], None]


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then freeze the survivors; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class PauseTimer:
    """Times each collection through `gc.callbacks`. Collections never overlap (the collecting thread
    holds the GIL throughout), so one start time is enough."""

    def __init__(self, observe: Observe):
        self.observe = observe
        self._started: float | None = None

    def start(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
        elif self._started is not None:
            self.observe(info["generation"], now - self._started)
            self._started = None


class HeapFreezer:
    """Freezes the start-up heap; with `thaw_after_s`, also the survivors of every full collection,
    thawing and collecting them all every `thaw_after_s`."""

    def __init__(self, thaw_after_s: float | None = None):
        self.thaw_after_s = thaw_after_s
        self.thaws = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        """Freeze the start-up heap (and keep freezing, if thawing); returns how many objects were frozen."""
        self._loop = loop
        frozen = freeze_startup_heap()
        if self.thaw_after_s is not None:
            if self._on_gc not in gc.callbacks:
                gc.callbacks.append(self._on_gc)
            self._timer = loop.call_later(self.thaw_after_s, self.thaw)
        return frozen

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_gc(self, phase: str, info: dict) -> None:
        # Any thread may be the one collecting; the freeze happens on the loop's thread, right after.
        if phase == "stop" and info["generation"] == 2 and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(gc.freeze)
            except RuntimeError:  # the loop is closed: shutting down
                pass

    def thaw(self) -> None:
        started, frozen = time.perf_counter(), gc.get_freeze_count()
        gc.unfreeze()
        freed = gc.collect()  # the one full walk: its callback freezes the survivors again
        self.thaws += 1
        log.info("garbage collector: %d frozen objects walked once, %d in unreachable cycles freed, in %.0f ms",
                 frozen, freed, (time.perf_counter() - started) * 1000)
        if self._loop is not None and self.thaw_after_s is not None:
            self._timer = self._loop.call_later(self.thaw_after_s, self.thaw)
