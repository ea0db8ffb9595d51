"""The cycle collector's pauses are timed per generation; survivors are frozen out of its walks and thawed
on a schedule, or as the audience grows and leaves."""

import asyncio
import contextlib
import gc
import weakref

from broadcaster.runtime.collector import (
    AT_LEAST,
    FULL_AFTER,
    LONGEST,
    AudienceFreezer,
    HeapFreezer,
    PauseTimer,
    freeze_startup_heap,
    held_off,
)


def test_each_collection_is_timed_with_its_generation():
    seen: list[tuple[int, float]] = []
    timer = PauseTimer(lambda generation, seconds: seen.append((generation, seconds)))
    timer.start()
    timer.start()  # twice is once: a collection is not counted double
    try:
        for generation in (0, 1, 2):
            gc.collect(generation)
    finally:
        timer.stop()
    assert [generation for generation, _ in seen] == [0, 1, 2]
    assert all(seconds >= 0 for _, seconds in seen)
    gc.collect()
    assert len(seen) == 3, "a stopped timer sees nothing more"
    timer.stop()  # and stopping again is harmless


def test_freezing_moves_the_survivors_out_of_the_collectors_walks():
    try:
        kept = [[index] for index in range(1000)]
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > len(kept)
        assert sum(gc.get_count()) < len(kept), "no generation holds the frozen objects any more"
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


class Node:
    """Something the collector tracks that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.me = self


async def test_survivors_of_a_full_collection_are_frozen_and_a_thaw_frees_their_cycles():
    loop = asyncio.get_running_loop()
    freezer = HeapFreezer(thaw_after_s=3600)
    try:
        assert freezer.start(loop) == gc.get_freeze_count() > 0
        survivor = Node()
        gc.collect()  # a full collection: its survivors are frozen on the loop's next turn
        await asyncio.sleep(0)
        assert not any(obj is survivor for obj in gc.get_objects(2)), "frozen: in no generation any more"
        alive = weakref.ref(survivor)
        del survivor  # garbage now, but in a cycle among frozen objects: no collection walks it
        gc.collect()
        assert alive() is not None
        freezer.thaw()  # unfrozen, collected once, the rest frozen again
        assert alive() is None
        assert freezer.thaws == 1
        await asyncio.sleep(0)
        assert gc.get_freeze_count() > 0
    finally:
        freezer.stop()
        gc.unfreeze()
    gc.collect()
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0, "a stopped freezer freezes nothing more"


async def test_the_freezer_thaws_on_its_own_schedule():
    freezer = HeapFreezer(thaw_after_s=0.05)
    try:
        freezer.start(asyncio.get_running_loop())
        async with asyncio.timeout(60):  # each thaw walks the whole test process: its speed is not the point
            while freezer.thaws < 2:  # the second proves it rescheduled itself after the first
                await asyncio.sleep(0.05)
    finally:
        freezer.stop()
        gc.unfreeze()


async def test_with_startup_only_the_start_up_heap_is_frozen():
    freezer = HeapFreezer()  # [server] gc_freeze = "startup"
    try:
        frozen = freezer.start(asyncio.get_running_loop())
        assert frozen == gc.get_freeze_count() > 0
        later = Node()
        alive = weakref.ref(later)
        gc.collect()
        await asyncio.sleep(0)
        assert gc.get_freeze_count() <= frozen, "survivors of later collections stay with the collector"
        del later
        gc.collect()
        assert alive() is None, "so their cycles are freed by the next collection"
    finally:
        freezer.stop()
        gc.unfreeze()


def is_frozen(obj: object) -> bool:
    return not any(tracked is obj for tracked in gc.get_objects())


class FakeAudience:
    def __init__(self) -> None:
        self.connected = self.departed = 0

    def __call__(self) -> tuple[int, int]:
        return self.connected, self.departed


async def collect_fully() -> None:
    gc.collect()
    await asyncio.sleep(0)  # the freeze, if any, happens on the loop's next turn


@contextlib.contextmanager
def audience_freezer(check_s: float, collector_runs: bool = True, **options):
    """A started AudienceFreezer and the fake audience it counts; with `collector_runs` False, the
    collector runs no full collection of its own meanwhile."""
    audience = FakeAudience()
    freezer = AudienceFreezer(audience, check_s=check_s, **options)
    if not collector_runs:
        gc.disable()
    try:
        freezer.start(asyncio.get_running_loop())
        yield audience, freezer
    finally:
        gc.enable()
        freezer.stop()
        gc.unfreeze()


async def test_the_survivors_of_every_full_collection_are_frozen_and_full_collections_come_sooner():
    python_s = gc.get_threshold()
    with audience_freezer(check_s=3600) as (audience, freezer):
        assert gc.get_threshold() == (*python_s[:2], FULL_AFTER)
        audience.connected = 1  # no newcomers to speak of: a full collection's survivors are frozen anyway
        renewed = Node()  # (a listener's heartbeat renews a dozen objects this way every round)
        await collect_fully()
        assert freezer.freezes == 1 and is_frozen(renewed)
        later = Node()
        await collect_fully()
        assert freezer.freezes == 2 and is_frozen(later)
        assert freezer.thaws == 0
    assert gc.get_threshold() == python_s, "Python's thresholds come back when the freezer stops"


async def test_after_a_large_freeze_the_next_full_collection_does_not_wait_for_a_quarter_of_it():
    """Python runs a full collection only once the objects that reached the oldest generation since the
    last outnumber a quarter of what that one left there, frozen or not; the freezer makes it count
    from nothing. Without that, after 400 000 were frozen, the next full collection would wait for
    100 000 to reach the oldest generation (a pause as long as the one the freeze was for)."""
    full = []

    def count_full(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(1)

    with audience_freezer(check_s=3600) as (audience, freezer):
        audience.connected = 1
        gc.disable()  # one full collection finds all of them, as after a burst of arrivals
        audience_held = [Node() for _ in range(400_000)]
        gc.enable()
        await collect_fully()
        assert is_frozen(audience_held[0])
        gc.callbacks.append(count_full)
        try:
            renewals = [Node() for _ in range(40_000)]  # long-lived: they reach the oldest generation
        finally:
            gc.callbacks.remove(count_full)
        assert full, "expected a full collection among 40 000 long-lived objects"
        del audience_held, renewals


async def test_with_an_audience_a_full_collection_comes_every_few_seconds_unless_held_off():
    with audience_freezer(check_s=3600, collector_runs=False, full_every_s=0.01) as (audience, freezer):
        audience.connected = AT_LEAST - 1
        small = Node()
        await asyncio.sleep(0.1)  # ten ticks
        assert freezer.freezes == 0 and not is_frozen(small), "a small audience renews too little to matter"
        audience.connected = AT_LEAST
        with held_off:
            await asyncio.sleep(0.1)
            assert freezer.freezes == 0, "no collection while one is held off"
        async with asyncio.timeout(60):
            while freezer.freezes < 2:  # the second proves the ticks go on
                await asyncio.sleep(0.01)
        assert is_frozen(small)


async def test_newcomers_are_collected_and_frozen_within_a_check_when_the_collector_runs_none():
    with audience_freezer(check_s=0.01, collector_runs=False) as (audience, freezer):
        newcomer = Node()
        audience.connected = AT_LEAST - 1
        await asyncio.sleep(0.1)  # ten checks
        assert freezer.freezes == 0 and not is_frozen(newcomer), "too few newcomers to be worth a freeze"
        audience.connected = AT_LEAST
        async with asyncio.timeout(60):
            while freezer.freezes < 1:
                await asyncio.sleep(0.01)
        assert is_frozen(newcomer)
        alive = weakref.ref(Node())  # garbage in a cycle, made before the check's collection...
        await asyncio.sleep(0.1)
        assert freezer.freezes == 1 and alive() is not None, "...which comes only once a quarter more arrive"


async def check(freezer: AudienceFreezer) -> None:
    freezer._check()
    await asyncio.sleep(0)  # a collection's survivors are frozen on the loop's next turn


async def test_a_late_burst_smaller_than_a_quarter_is_frozen_once_arrivals_stop():
    with audience_freezer(check_s=3600, collector_runs=False) as (audience, freezer):
        audience.connected = 400
        await check(freezer)
        assert freezer.freezes == 1
        straggler = Node()
        audience.connected = 400 + AT_LEAST  # fewer than a quarter of the 500 now here...
        await check(freezer)
        assert freezer.freezes == 1 and not is_frozen(straggler), "...and still arriving: no freeze"
        await check(freezer)  # nobody arrived since the last check: the burst is over
        assert freezer.freezes == 2 and is_frozen(straggler)
        audience.connected += AT_LEAST - 1
        await check(freezer)
        await check(freezer)
        assert freezer.freezes == 2, "a finished burst must still be AT_LEAST listeners to be worth a freeze"


async def test_the_audience_turning_over_thaws_and_frees_the_cycles_it_left():
    with audience_freezer(check_s=0.01) as (audience, freezer):
        audience.connected = 400
        listener = Node()
        await collect_fully()
        assert is_frozen(listener)
        alive = weakref.ref(listener)
        del listener
        audience.connected, audience.departed = 400, 399  # churn: one fewer than are here has left
        await asyncio.sleep(0.1)  # ten checks
        assert freezer.thaws == 0 and alive() is not None, "its cycle waits among the frozen objects"
        audience.departed = 400
        async with asyncio.timeout(60):  # each thaw walks the whole test process: its speed is not the point
            while freezer.thaws < 1:
                await asyncio.sleep(0.01)
        assert alive() is None
        await asyncio.sleep(0.05)
        assert freezer.thaws == 1, "departures are counted again from the thaw"


async def test_walks_come_further_apart_while_they_find_little_and_close_again_when_one_finds_more():
    counts = []
    with audience_freezer(check_s=3600, collector_runs=False, walk_every_s=0.05, on_count=counts.append) as (
        audience,
        freezer,
    ):
        for expected_s in (0.1, 0.2, 0.4, 0.8):
            freezer._walk_all(0, 0)
            assert freezer.walk_wait_s == expected_s, "little garbage found: the next walk waits twice as long"
        for _ in range(3):
            freezer._walk_all(0, 0)
        assert freezer.walk_wait_s == LONGEST * 0.05, "up to LONGEST times the first wait"
        in_flight = [Node() for _ in range(counts[-1] // 50)]  # 2% of the heap, caught in a freeze, then dead
        gc.freeze()
        alive = weakref.ref(in_flight[0])
        del in_flight
        freezer._walk_all(0, 0)
        assert alive() is None and freezer.walk_wait_s == 0.05, "much garbage found: back to the first wait"
        assert len(counts) == 1 + freezer.thaws, "counted at the start and at each walk"


async def test_a_walk_comes_on_its_own_once_the_wait_is_over():
    with audience_freezer(check_s=0.01, collector_runs=False, walk_every_s=0.05) as (audience, freezer):
        async with asyncio.timeout(60):  # each walk covers the whole test process: its speed is not the point
            while freezer.thaws < 2:
                await asyncio.sleep(0.01)
        with held_off:
            walks = freezer.thaws
            await asyncio.sleep(0.5)
            assert freezer.thaws == walks, "no walk while collections are held off"


async def test_an_audience_that_trickled_in_is_walked_once_it_has_turned_over():
    with audience_freezer(check_s=3600) as (audience, freezer):
        for _ in range(40):  # never AT_LEAST newcomers between two freezes
            audience.connected += 10
            await collect_fully()
        audience.connected, audience.departed = 0, 400
        await check(freezer)
        assert freezer.thaws == 1


async def test_departures_thaw_nothing_while_only_the_start_up_heap_is_frozen():
    with audience_freezer(check_s=0.01, collector_runs=False) as (audience, freezer):
        audience.departed = 10 * AT_LEAST
        await asyncio.sleep(0.1)
        assert freezer.thaws == 0 and freezer.freezes == 0


async def test_held_off_sections_nest_across_tasks_and_leave_a_disabled_collector_off():
    assert gc.isenabled()
    entered, leave = asyncio.Event(), asyncio.Event()

    async def section() -> None:
        with held_off:
            entered.set()
            await leave.wait()

    task = asyncio.create_task(section())
    await entered.wait()
    with held_off:
        assert not gc.isenabled()
    assert not gc.isenabled(), "the other task's section is still open"
    leave.set()
    await task
    assert gc.isenabled()
    gc.disable()
    try:
        with held_off:
            pass
        assert not gc.isenabled(), "off before: off after"
    finally:
        gc.enable()


def test_a_collection_due_inside_a_held_off_section_runs_after_it():
    pauses = []
    timer = PauseTimer(lambda generation, seconds: pauses.append(generation))
    timer.start()
    try:
        with held_off:
            junk = [[] for _ in range(100_000)]  # far past the threshold of the youngest generation
            assert pauses == []
        del junk
        [[] for _ in range(1000)]
        assert pauses, "and it comes at the next allocation after"
    finally:
        timer.stop()
