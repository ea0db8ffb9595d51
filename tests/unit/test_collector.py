"""The cycle collector's pauses are timed per generation, and the start-up heap can be frozen."""

import gc

from broadcaster.runtime.collector import PauseTimer, freeze_startup_heap


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
