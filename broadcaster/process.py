"""Process-wide settings made once at start-up, before any thread exists."""

import ctypes

M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives threads their own heaps (up to eight per core), and memory freed in one is not
    reused by another. The server's few threads (synthesis, file I/O, SQLite) then hold tens of MB
    each after a burst; two shared heaps keep it down (measured: docs/performance.md). A no-op
    where glibc is not the C library."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
