"""Facts and settings of the server's own process, not of any library: the C allocator's settings
(made once at start-up, before any thread exists) and counts, SQLite's memory, giving freed memory
back, and the open-file limit. Each is a no-op, or says it cannot tell, where glibc is not the C
library."""

import ctypes
import resource
from pathlib import Path

M_MMAP_THRESHOLD = -3  # glibc mallopt parameters
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 1024  # below the smallest chunk file (a few seconds of 64 kbit/s MP3)


def _libc():  # noqa: ANN202
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_allocator(arenas: int = 2) -> bool:
    """Two choices, both measured in docs/performance.md:

    - glibc gives threads their own heaps (up to eight per core), and memory freed in one is not
      reused by another; the server's few threads (synthesis, file I/O, SQLite) then each keep
      tens of MB after a burst. Two shared heaps keep that down.
    - glibc raises its mmap threshold each time a large block is freed, after which chunk-sized
      buffers (audio files, responses) come from the heap and fragment it: a cached chunk that
      lives for minutes pins the heap above the short-lived buffers freed below it. A fixed
      threshold under the size of a chunk file keeps them in their own mappings, which go back to
      the system when freed.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        return bool(libc.mallopt(M_ARENA_MAX, arenas)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except AttributeError:
        return False


def _sqlite_memory_used():  # noqa: ANN202
    """SQLite's own count of the memory it holds (page caches, statements) across every connection
    of the process, from the library the sqlite3 module is linked to; None where it is not reachable."""
    try:
        import _sqlite3

        used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (ImportError, OSError, AttributeError):
        return None
    used.restype, used.argtypes = ctypes.c_int64, []
    return used


sqlite_memory_used = _sqlite_memory_used()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2():  # noqa: ANN202
    libc = _libc()
    try:
        mallinfo2 = libc.mallinfo2  # glibc 2.33 and later
    except AttributeError:  # no glibc, or an older one
        return None
    mallinfo2.restype, mallinfo2.argtypes = _MallInfo2, []
    return mallinfo2


_mallinfo2_call = _mallinfo2()


def malloc_usage() -> tuple[int, int] | None:
    """(bytes the C allocator has handed out and not had back, free bytes it holds in its heaps),
    or None where glibc cannot tell. The first follows live memory (Python's small objects come
    from arenas it takes from here), so it tells a leak from a heap that is only fragmented (the
    second). It walks the allocator's free lists under their locks: milliseconds on a fragmented heap,
    so call it off the event loop."""
    if _mallinfo2_call is None:
        return None
    info = _mallinfo2_call()
    return info.uordblks + info.hblkhd, info.fordblks


def release_free_memory() -> None:
    """Return free heap pages to the system."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def raise_open_file_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard one; returns (before, after).

    Every listener holds a descriptor (its socket), and so does every chunk fetch's connection,
    while many systems start a process with a soft limit of 1024 (and a hard one in the hundreds of
    thousands), which would refuse the thousandth listener or so.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else _kernel_open_file_cap()
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, wanted


def _kernel_open_file_cap() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20
