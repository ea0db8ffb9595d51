"""One message to thousands of sockets: the cost of a broadcast.

A small send on a TCP socket costs about ten microseconds of kernel time (on
loopback the receiver's side of TCP runs inside the sender's system call as
well), and going through an asyncio transport adds as much again in Python.
So a listener whose transport has nothing buffered gets one `os.write` on its
socket, and a large group is split between the event loop's thread and helper
threads: `os.write` releases the GIL, so the kernel work of sends on different
sockets overlaps on different cores.

The event loop's thread waits for its helpers before it returns, so nothing
else touches those sockets meanwhile (no transport can close one mid-write).
Whatever a socket does not take at once is reported back, and the caller hands
the rest to that socket's transport, which sends it when the socket drains.
"""

import os
from concurrent.futures import ThreadPoolExecutor

MIN_SHARE = 256  # fewer sockets than this per thread are not worth a thread hand-off
MAX_THREADS = 4

# (index into the fds given, bytes the socket took: 0 when full, -1 when the connection is broken)
Short = tuple[int, int]


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_THREADS))


def write_each(data: bytes, fds: list[int], start: int, stop: int) -> list[Short]:
    """Write `data` to fds[start:stop]; the sockets that did not take all of it."""
    short = []
    size, write = len(data), os.write
    for index in range(start, stop):
        try:
            sent = write(fds[index], data)
        except BlockingIOError:
            sent = 0
        except OSError:  # reset or closed by the peer: its reader will see it and clean up
            sent = -1
        if sent != size:
            short.append((index, sent))
    return short


class SocketWriter:
    """Writes the same bytes to many non-blocking sockets, across `threads` threads when there are many."""

    def __init__(self, threads: int = 0):
        self.threads = threads or default_threads()
        self._pool = ThreadPoolExecutor(self.threads - 1, "fanout") if self.threads > 1 else None

    def write(self, data: bytes, fds: list[int]) -> list[Short]:
        shares = min(self.threads, len(fds) // MIN_SHARE) if self._pool else 1
        if shares <= 1:
            return write_each(data, fds, 0, len(fds))
        bounds = [len(fds) * k // shares for k in range(shares + 1)]
        helpers = [self._pool.submit(write_each, data, fds, bounds[k], bounds[k + 1]) for k in range(1, shares)]
        short = write_each(data, fds, bounds[0], bounds[1])
        for helper in helpers:
            short += helper.result()
        return short

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
