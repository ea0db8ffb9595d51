"""The server clock: integer Unix epoch milliseconds. Only adapters read it."""

import time
from collections.abc import Callable

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
