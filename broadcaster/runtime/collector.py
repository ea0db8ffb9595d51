"""Python's cycle collector: its pauses timed, and the start-up heap kept out of its way.

The collector runs on whichever thread happens to allocate when a threshold is
crossed, and holds the GIL until it is done, so the event loop stands still
meanwhile. A full collection walks every object the collector tracks, roughly
a microsecond each on a small server. Each WebSocket listener brings about a
hundred of them (aiohttp's request, handler, parser and writer; our queue and
writer task), so with thousands of listeners one full collection is the
longest stall the server has (measured in docs/performance.md).

Two things here. Every pause is timed into `broadcaster_gc_pause_seconds`, so
an operator sees it. And `freeze_startup_heap` moves the objects made at
start-up (modules, classes, the voice, the database schema: tens of
thousands) into the permanent generation, which no later collection walks.
They live until exit anyway; the one cost is that a cycle among them that
becomes garbage later is never collected, which is why only the server's own
process freezes (`broadcaster serve`), never a program that embeds the app.
"""

import gc
import time
from collections.abc import Callable

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
