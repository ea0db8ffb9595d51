"""Every run of the cycle collector is timed with its generation, for /metrics."""

import gc

from broadcaster.runtime.telemetry import PauseTimer


def test_each_collection_is_timed_with_its_generation():
    """Collections of each generation are observed once each, and none after the timer stops."""
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
