"""The C allocator's own count of memory in use, which the soak and /metrics use to tell a leak
from a fragmented heap."""

import pytest

from broadcaster.process import malloc_usage
from broadcaster.runtime.telemetry import Telemetry

SIZE = 64 * 2**20


@pytest.mark.skipif(malloc_usage() is None, reason="needs glibc 2.33 or later (mallinfo2)")
def test_in_use_follows_a_large_block_and_falls_when_it_is_freed() -> None:
    before, _ = malloc_usage()
    block = bytearray(SIZE)  # Python asks the C allocator for large objects whatever the small-object allocator
    held, _ = malloc_usage()
    del block
    after, _ = malloc_usage()
    assert held - before >= SIZE
    assert held - after >= SIZE


def test_gauges_show_the_usage_and_keep_the_last_when_there_is_none() -> None:
    telemetry = Telemetry()
    telemetry.set_malloc((123_456, 789))
    telemetry.set_malloc(None)
    assert telemetry.registry.get_sample_value("broadcaster_malloc_in_use_bytes") == 123_456
    assert telemetry.registry.get_sample_value("broadcaster_malloc_free_bytes") == 789
