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
- "audience" (the default): the start-up heap, and what survives a full
  collection that comes once a quarter of the audience (and at least
  `AT_LEAST` listeners) has arrived since the last freeze; if the collector
  has not run one within `CHECK_S` by then, one is run, so a burst of
  arrivals is frozen seconds after it, not whenever the collector next walks
  it (among a producer's announcements, say). A burst smaller than a quarter
  (the last listeners of a crowd that arrived after its last freeze, say) is
  frozen too once a check finds that nobody arrived since the one before.
  Most of what survives then is
  the newcomers' connections, which live for minutes or hours; freezing only
  every quarter of the audience keeps the short-lived objects caught in a
  freeze (HTTP requests in flight) few. A listener that leaves is freed at
  once, frozen or not, except for 5 objects asyncio's transport keeps in a
  cycle of its own (web/ws.py breaks aiohttp's and ours, which were 48). Once
  as many listeners have left since the last thaw as are connected (the
  audience has turned over), the frozen heap is thawed and walked once, which
  frees those, and what is alive is frozen again: one full-length walk per
  audience turned over.
- "survivors": also what survives each full collection, so the next full
  collection walks only what was made since: with thousands of listeners, a
  tenth of the pause. Frozen objects are still freed as soon as nothing refers
  to them, but garbage in reference cycles among them waits for the thaw,
  every `thaw_after_s`: everything is unfrozen and collected once, one
  full-length pause. Whatever was in flight at a freeze and dies in a cycle
  waits for it: before departures were made cycle-free, a soak with chunk
  fetches held hundreds of thousands of objects for ten minutes, tens of MB,
  and its thaw took over a second (docs/performance.md). So it is for large,
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
        # Any thread may be the one collecting; what follows runs on the loop's thread, right after.
        if phase == "stop" and info["generation"] == 2 and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._after_full_collection)
            except RuntimeError:  # the loop is closed: shutting down
                pass

    def _after_full_collection(self) -> None:
        gc.freeze()

    def thaw(self) -> None:
        started, frozen = time.perf_counter(), gc.get_freeze_count()
        gc.unfreeze()
        freed = gc.collect()  # the one full walk: its callback freezes the survivors again
        self.thaws += 1
        log.info("garbage collector: %d frozen objects walked once, %d in unreachable cycles freed, in %.0f ms",
                 frozen, freed, (time.perf_counter() - started) * 1000)
        if self._loop is not None and self.thaw_after_s is not None:
            self._timer = self._loop.call_later(self.thaw_after_s, self.thaw)


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

NEWCOMERS = 0.25  # of the audience: arrivals since the last freeze that make a freeze worth it
TURNOVER = 1.0  # of the audience: departures since the last thaw that make a thaw worth it
AT_LEAST = 100  # listeners: fewer connected, arrived or departed are not worth a freeze or a thaw
CHECK_S = 5  # how often arrivals and departures are counted: a burst is frozen within two checks of its end


class AudienceFreezer(HeapFreezer):
    """Freezes the start-up heap, then the survivors of a full collection once NEWCOMERS of the
    audience (at least AT_LEAST listeners) have arrived since the last freeze (the collector's own, or
    one run every CHECK_S when none came), or AT_LEAST have and then none for a whole CHECK_S;
    thaws once TURNOVER of it has left since the last thaw."""

    def __init__(self, audience: Audience, check_s: float = CHECK_S):
        super().__init__()
        self.audience = audience
        self.check_s = check_s
        self.freezes = 0
        self._arrived_before = 0  # arrivals at the last freeze or thaw
        self._departed_before = 0  # departures at the last thaw
        self._arrived_at_check = 0  # arrivals at the last check
        self._listeners_frozen = False  # since the last thaw; until then only the start-up heap is

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        frozen = super().start(loop)
        connected, departed = self.audience()
        self._arrived_before, self._departed_before = connected + departed, departed
        self._arrived_at_check = connected + departed
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        self._timer = loop.call_later(self.check_s, self._check)
        return frozen

    def _after_full_collection(self) -> None:
        self._freeze_if_new_arrivals()

    def _freeze_if_new_arrivals(self, collect: bool = False, settled: bool = False) -> bool:
        """`settled`: nobody has arrived for a while, so the newcomers are a finished burst, and
        AT_LEAST of them are worth a freeze even if they are fewer than NEWCOMERS of the audience."""
        connected, departed = self.audience()
        arrived = connected + departed - self._arrived_before
        enough = AT_LEAST if settled else max(AT_LEAST, NEWCOMERS * connected)
        if not (connected >= AT_LEAST and arrived >= enough):
            return False
        if collect:
            gc.collect()  # what would otherwise wait for the collector's own next full collection
        gc.freeze()
        self.freezes += 1
        self._arrived_before, self._listeners_frozen = connected + departed, True
        log.info("garbage collector: %d listeners now, %d objects frozen", connected, gc.get_freeze_count())
        return True

    def _check(self) -> None:
        # Newcomers not frozen by now would make the next full collection walk them all, at a moment
        # nobody chose (among a producer's announcements, say): collect and freeze them now instead.
        connected, departed = self.audience()
        settled = connected + departed == self._arrived_at_check
        self._arrived_at_check = connected + departed
        froze = self._freeze_if_new_arrivals(collect=True, settled=settled)
        turned_over = departed - self._departed_before >= max(AT_LEAST, TURNOVER * connected)
        if not froze and self._listeners_frozen and turned_over:
            self.thaw()
            gc.freeze()  # what is alive now: mostly the audience that is here
            self._arrived_before, self._departed_before = connected + departed, departed
            self._listeners_frozen = connected > 0
        if self._loop is not None:
            self._timer = self._loop.call_later(self.check_s, self._check)
