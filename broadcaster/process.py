"""Process-wide settings for the server, made once at start-up before any thread exists: memory
(no-ops where glibc is not the C library; and a way to give freed memory back) and open files."""

import ctypes
import os
import resource
import sys
from pathlib import Path

from broadcaster.errors import BadInput

M_MMAP_THRESHOLD = -3  # glibc mallopt parameters
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 1024  # below the smallest chunk file (a few seconds of 64 kbit/s MP3)


ALLOCATORS = ("malloc", "pymalloc")


def choose_small_object_allocator(allocator: str, restart: bool = True) -> None:
    """Run the server with the allocator the config names, by re-executing this process if needed.

    Python's own allocator (pymalloc) hands out small objects from 1 MiB arenas and returns an
    arena only once every object in it is gone. After a burst of thousands of requests a few
    survivors pin many arenas, and a long-running server's memory steps up with each large burst
    and stays there (docs/performance.md, the soak). With "malloc" small objects come from
    glibc, whose free pages the periodic heap trim gives back. Python reads its allocator from
    the environment only at start-up, hence the re-exec (unless `restart` is false: called from
    within another program); an explicit PYTHONMALLOC wins.
    """
    if allocator not in ALLOCATORS:
        raise BadInput(f"expected [server] allocator 'malloc' or 'pymalloc', got {allocator!r}")
    if not restart or allocator == "pymalloc" or os.environ.get("PYTHONMALLOC"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "PYTHONMALLOC": allocator})


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
    or None where glibc cannot tell. The first follows live objects under the default
    `allocator = "malloc"`, so it tells a leak from a heap that is only fragmented (the second).
    It walks the allocator's free lists under their locks: milliseconds on a fragmented heap,
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

    Every listener holds two descriptors here (its socket, and the fan-out's duplicate of it) and
    every chunk fetch a connection, while many systems start a process with a soft limit of 1024
    (and a hard one in the hundreds of thousands), which would refuse the 400th listener or so.
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


def _nothing_to_read() -> None:
    pass


def free_closed_transports_at_once() -> bool:
    """Every closed TCP connection would otherwise wait for the cycle collector: asyncio's socket
    transport (Python 3.11) keeps a bound method of its own as its read callback, a reference cycle
    (with its socket and extras, 7 objects) that nothing breaks when the connection is lost. Where
    the server freezes survivors out of the collector's walks (runtime/collector.py), a connection
    that was open at a freeze and then closed waits there for the next walk of everything: a soak's
    chunk fetchers, whose keep-alive connections come and go in thousands, piled up tens of MB so.
    Clears the callback once the connection is gone (nothing reads after that); returns False where
    this Python's transport has no such callback."""
    from asyncio import selector_events

    transport = getattr(selector_events, "_SelectorSocketTransport", None)
    lost = getattr(transport, "_call_connection_lost", None)
    if lost is None or "_read_ready_cb" not in transport.__init__.__code__.co_names:
        return False
    if getattr(lost, "frees_read_callback", False):
        return True

    def call_connection_lost(self, exc):  # noqa: ANN001, ANN202
        try:
            lost(self, exc)
        finally:
            self._read_ready_cb = _nothing_to_read

    call_connection_lost.frees_read_callback = True
    transport._call_connection_lost = call_connection_lost
    return True
