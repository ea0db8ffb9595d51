"""The cycle collector's pauses are timed per generation; survivors are frozen out of its walks and thawed
on a schedule, or as the audience grows and leaves."""

import asyncio
import contextlib
import gc
import weakref

from broadcaster.runtime.collector import (
    AT_LEAST,
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
def audience_freezer(check_s: float, collector_runs: bool = True):  # noqa: ANN201
    """A started AudienceFreezer and the fake audience it counts; with `collector_runs` False, the
    collector runs no full collection of its own meanwhile."""
    audience = FakeAudience()
    freezer = AudienceFreezer(audience, check_s=check_s)
    if not collector_runs:
        gc.disable()
    try:
        freezer.start(asyncio.get_running_loop())
        yield audience, freezer
    finally:
        gc.enable()
        freezer.stop()
        gc.unfreeze()


async def test_survivors_are_frozen_only_once_a_quarter_of_the_audience_is_new():
    with audience_freezer(check_s=3600) as (audience, freezer):
        audience.connected = AT_LEAST - 1
        early = Node()
        await collect_fully()
        assert freezer.freezes == 0 and not is_frozen(early), "too few newcomers to be worth a freeze"
        audience.connected = 400
        await collect_fully()
        assert freezer.freezes == 1 and is_frozen(early)
        audience.connected, audience.departed = 420, 79  # 99 arrived since: fewer than a quarter of 420
        later = Node()
        await collect_fully()
        assert freezer.freezes == 1 and not is_frozen(later)
        audience.connected, audience.departed = 400, 100  # churn, no growth: 100 newcomers, a quarter
        await collect_fully()
        assert freezer.freezes == 2 and is_frozen(later)


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


async def test_a_late_burst_smaller_than_a_quarter_is_frozen_once_arrivals_stop():
    with audience_freezer(check_s=3600, collector_runs=False) as (audience, freezer):
        audience.connected = 400
        freezer._check()
        assert freezer.freezes == 1
        straggler = Node()
        audience.connected = 400 + AT_LEAST  # fewer than a quarter of the 500 now here...
        freezer._check()
        assert freezer.freezes == 1 and not is_frozen(straggler), "...and still arriving: no freeze"
        freezer._check()  # nobody arrived since the last check: the burst is over
        assert freezer.freezes == 2 and is_frozen(straggler)
        audience.connected += AT_LEAST - 1
        freezer._check()
        freezer._check()
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
        stayed = Node()
        await asyncio.sleep(0.05)
        assert freezer.thaws == 1, "departures are counted again from the thaw"
        await collect_fully()
        assert not is_frozen(stayed), "and arrivals: no newcomers since the thaw, no freeze"


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
