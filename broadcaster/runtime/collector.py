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

- "startup": the objects made at start-up (modules, classes, the schema: some
  80 000) are frozen, moved into the permanent generation, which no collection
  walks. They live until exit anyway.
- "audience" (the default): the start-up heap, and what survives each full
  collection. Full collections come more often than Python's default: every
  FULL_AFTER + 1 collections of the middle generation (not 11), and with
  AT_LEAST listeners every FULL_EVERY_S as well. Each one then walks only what
  was made since the last: with a steady audience, mostly the renewals of the
  listeners' heartbeats. Each pong leaves about a dozen new objects per
  listener, replacing as many, so with 5000 listeners the collector's own
  full collections came tens of seconds apart and walked all the renewals of
  that time (26-82 ms); every 2 s, mostly 2-14 ms. A frozen object is
  still freed as soon as nothing refers to it; only garbage in reference
  cycles among frozen objects waits, for a walk: everything unfrozen and
  collected once, one full-length pause. A walk comes once as many listeners
  have left since the last one as are connected (the audience has turned
  over: web/ws.py breaks the cycles aiohttp's and ours left per departure,
  48 objects, and `serve` the one asyncio's transport leaves per closed
  connection, process.free_closed_transports_at_once), and on a
  timer (`walk_every_s`, `[server] gc_thaw_minutes`) that doubles, up to
  LONGEST times, after each walk that finds LITTLE garbage in cycles (what
  was in flight at a freeze and died in a cycle), and starts over after one
  that finds more: so such garbage is kept to about LITTLE of the heap, and a
  server that makes none is walked rarely. (Counting the frozen objects
  visits every one of them, 90 ms for 650 000 here, so they are counted only
  during a walk.) A burst of arrivals (a quarter of the audience, at least
  `AT_LEAST` listeners, or `AT_LEAST` and then nobody for a whole check)
  that no full collection has frozen within `CHECK_S` is collected and
  frozen then, so it is not walked whenever the collector next runs (among a
  producer's announcements, say).
- "survivors": the start-up heap and what survives each full collection (at
  Python's own pace), with a thaw every `thaw_after_s` whatever happened.
  Whatever was in flight at a freeze and dies in a cycle waits for the thaw:
  before departures were made cycle-free, a soak with chunk
  fetches held hundreds of thousands of objects for ten minutes, tens of MB,
  and its thaw took over a second (docs/performance.md).
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

    def __init__(self, thaw_after_s: float | None = None, on_count: Callable[[int], None] = lambda frozen: None):
        self.thaw_after_s = thaw_after_s
        self.on_count = on_count  # the frozen objects, each time they are counted: at start-up and each thaw
        self.thaws = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._own_collection = False  # a collection of ours that is no reason to freeze

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        """Freeze the start-up heap (and keep freezing, if thawing); returns how many objects were frozen."""
        self._loop = loop
        frozen = freeze_startup_heap()
        self.on_count(frozen)
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
        # Any thread may be the one collecting; what follows runs on the loop's thread, right after.
        if phase == "stop" and info["generation"] == 2 and self._loop is not None and not self._own_collection:
            try:
                self._loop.call_soon_threadsafe(self._after_full_collection)
            except RuntimeError:  # the loop is closed: shutting down
                pass

    def _after_full_collection(self) -> None:
        gc.freeze()

    def thaw(self) -> tuple[int, int]:
        """Unfreeze and walk everything once; returns (objects walked, objects freed)."""
        started = time.perf_counter()
        frozen = gc.get_freeze_count()  # walks the frozen list itself: only ever counted with a walk
        gc.unfreeze()
        freed = gc.collect()  # the one full walk: its callback freezes the survivors again
        self.thaws += 1
        log.info(
            "garbage collector: %d frozen objects walked once, %d in unreachable cycles freed, in %.0f ms",
            frozen,
            freed,
            (time.perf_counter() - started) * 1000,
        )
        self.on_count(frozen - freed)
        if self._loop is not None and self.thaw_after_s is not None:
            self._timer = self._loop.call_later(self.thaw_after_s, self.thaw)
        return frozen, freed


class HeldOff:
    """`with held_off:` no collection starts inside; one that comes due waits for the end.

    For a channel's step and its announcement: a few milliseconds that thousands of listeners wait
    on, where a full collection (tens of milliseconds with thousands of listeners, and due every
    heartbeat round, when each listener's pong renews a dozen of its objects) would hold up every
    one of them. It runs just after instead. Nests, and across tasks: the collector comes back when
    the last section ends, unless it was off before the first began."""

    def __init__(self) -> None:
        self.depth = 0
        self._enable_after = False

    def __enter__(self) -> None:
        if self.depth == 0:
            self._enable_after = gc.isenabled()
            gc.disable()
        self.depth += 1

    def __exit__(self, *_: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self._enable_after:
            gc.enable()


held_off = HeldOff()


# (listeners connected now, listeners that have left since start-up); their sum is every arrival
Audience = Callable[[], tuple[int, int]]

NEWCOMERS = 0.25  # of the audience: arrivals since the last freeze that a check collects and freezes
TURNOVER = 1.0  # of the audience: departures since the last walk that make a walk worth it
AT_LEAST = 100  # listeners: fewer connected, arrived or departed are not worth a forced freeze or a walk
CHECK_S = 5  # how often arrivals and departures are counted: a burst is frozen within two checks of its end
# Collections of the middle generation a full one waits for, past the first (Python's: 10). Python also
# waits until what reached the oldest generation since the last full collection outnumbers a quarter of
# what that one left there; frozen, those are not there any more, but it counts them until its next full
# collection. So each freeze is followed by one that walks nothing (`_freeze_all`).
FULL_AFTER = 1
# With AT_LEAST listeners or more, a full collection at least this often. Heartbeat renewals replace
# objects one for one, so the youngest generation fills slowly and Python's own full collections come
# tens of seconds apart, each walking the renewals of all that time (with 5000 listeners: 26-82 ms).
FULL_EVERY_S = 2.0
LITTLE = 0.01  # of the objects walked: garbage a walk may find for the next wait to be twice as long
LONGEST = 16  # the longest wait between walks, in multiples of the first


def _collect() -> None:
    """A full collection now, unless one is held off (then the next tick or check runs it); the
    AudienceFreezer's callback freezes what survived, on the loop's next turn."""
    if held_off.depth == 0:
        gc.collect()


class AudienceFreezer(HeapFreezer):
    """Freezes the start-up heap, then the survivors of every full collection (which come every
    FULL_AFTER + 1 middle collections, and with AT_LEAST listeners every FULL_EVERY_S); a burst of
    newcomers that none has frozen within a check is collected and frozen then. Walks everything once
    the audience has turned over (TURNOVER), and every `walk_every_s`, a wait that doubles (up to
    LONGEST times) after each walk that finds LITTLE garbage and starts over after one that finds more."""

    def __init__(
        self,
        audience: Audience,
        check_s: float = CHECK_S,
        walk_every_s: float = 600,
        full_every_s: float = FULL_EVERY_S,
        on_count: Callable[[int], None] = lambda frozen: None,
    ):
        super().__init__(on_count=on_count)
        self.audience = audience
        self.check_s = check_s
        self.walk_every_s = walk_every_s
        self.full_every_s = full_every_s
        self.freezes = 0
        self.walk_wait_s = walk_every_s  # until the next timed walk, from the last walk
        self._thresholds: tuple[int, int, int] | None = None  # Python's, while ours are in force
        self._ticker: asyncio.TimerHandle | None = None
        self._full_at = 0.0  # loop time of the last full collection
        self._walked_at = 0.0  # loop time of the last walk of everything (or the start)
        self._arrived_before = 0  # arrivals at the last freeze or walk
        self._departed_before = 0  # departures at the last walk
        self._arrived_at_check = 0  # arrivals at the last check
        self._listeners_frozen = False  # since the last walk; until then only the start-up heap is

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        frozen = super().start(loop)
        connected, departed = self.audience()
        self._arrived_before, self._departed_before = connected + departed, departed
        self._arrived_at_check = connected + departed
        self._freeze_all()
        self._thresholds = gc.get_threshold()
        gc.set_threshold(self._thresholds[0], self._thresholds[1], FULL_AFTER)
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        self._timer = loop.call_later(self.check_s, self._check)
        self._full_at = self._walked_at = loop.time()
        self._ticker = loop.call_later(self.full_every_s, self._tick)
        return frozen

    def stop(self) -> None:
        super().stop()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    def _after_full_collection(self) -> None:
        if self._loop is not None:
            self._full_at = self._loop.time()
        self._freeze()

    def _tick(self) -> None:
        if self._loop is None:
            return
        connected, _ = self.audience()
        if connected >= AT_LEAST and self._loop.time() - self._full_at >= 0.9 * self.full_every_s:
            _collect()
        self._ticker = self._loop.call_later(self.full_every_s, self._tick)

    def _freeze(self) -> None:
        connected, departed = self.audience()
        arrived = connected + departed - self._arrived_before
        self._freeze_all()
        self.freezes += 1
        self._arrived_before = connected + departed
        self._listeners_frozen |= connected > 0
        if arrived >= AT_LEAST:
            log.info("garbage collector: %d listeners now, %d newly arrived frozen", connected, arrived)

    def _freeze_all(self) -> None:
        gc.freeze()
        self._own_collection = True
        try:
            gc.collect(2)  # walks nothing: everything is frozen (FULL_AFTER says why)
        finally:
            self._own_collection = False

    def _newcomers_waiting(self, settled: bool) -> bool:
        """Enough listeners arrived since the last freeze for a collection of its own: a quarter of the
        audience, or fewer once nobody has arrived for a whole check (`settled`), but AT_LEAST."""
        connected, departed = self.audience()
        arrived = connected + departed - self._arrived_before
        enough = AT_LEAST if settled else max(AT_LEAST, NEWCOMERS * connected)
        return connected >= AT_LEAST and arrived >= enough

    def _check(self) -> None:
        # Newcomers not frozen by now would make the next full collection walk them all, at a moment
        # nobody chose (among a producer's announcements, say): collect and freeze them now instead.
        connected, departed = self.audience()
        settled = connected + departed == self._arrived_at_check
        self._arrived_at_check = connected + departed
        if self._newcomers_waiting(settled):
            _collect()
        elif held_off.depth == 0:
            turned_over = departed - self._departed_before >= max(AT_LEAST, TURNOVER * connected)
            due = self._loop is not None and self._loop.time() - self._walked_at >= self.walk_wait_s
            if (self._listeners_frozen and turned_over) or due:
                self._walk_all(connected, departed)
        if self._loop is not None:
            self._timer = self._loop.call_later(self.check_s, self._check)

    def _walk_all(self, connected: int, departed: int) -> None:
        """Everything walked once: the garbage in cycles among frozen objects freed. Whatever was in
        flight at a freeze and died in a cycle waits for this; how much the walk finds sets the next wait."""
        walked, freed = self.thaw()
        self._freeze_all()  # what is alive now: mostly the audience that is here
        little = freed <= LITTLE * walked
        self.walk_wait_s = min(2 * self.walk_wait_s, LONGEST * self.walk_every_s) if little else self.walk_every_s
        self._arrived_before, self._departed_before = connected + departed, departed
        self._listeners_frozen = connected > 0
        if self._loop is not None:
            self._walked_at = self._loop.time()
