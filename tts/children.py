"""Child processes (ffmpeg) that die with the server and stay inside their bounds.

A child that reads files is started with the kernel's parent-death signal set, so it is killed
however the server stops: SIGTERM, a crash, SIGKILL. A child the server feeds through its stdin
(an encoder) needs no such step: when the server dies its stdin closes, and it finishes and exits. A decoder of untrusted bytes also gets a cap on its
address space and a wall-clock timeout, and what it prints is kept only as a short tail, since a
damaged file can make ffmpeg print a line per frame for as long as it runs.
"""

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from functools import cache

PR_SET_PDEATHSIG = 1
STDERR_TAIL_BYTES = 4096
READ_BYTES = 16 * 1024


@cache
def _prctl() -> Callable[..., int] | None:
    """Loaded in the server, never in a freshly forked child."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def child_setup(memory_bytes: int | None = None) -> Callable[[], None]:
    """What runs in the child between fork and exec: die with the server, and cap memory if asked.

    Plain system calls only, prepared beforehand: other threads of the server may hold locks."""
    prctl, parent = _prctl(), os.getpid()

    def setup() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the server died before the signal was armed
                os._exit(1)
        if memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return setup


def child_env() -> dict[str, str]:
    # glibc reserves 64 MB of address space per thread's heap; two heaps keep ffmpeg's reservation
    # near what it uses, so an address-space cap measures memory, not the number of threads.
    return {**os.environ, "MALLOC_ARENA_MAX": "2"}


async def spawn(*args: str, memory_bytes: int | None = None, fed: bool = False, **kwargs) -> asyncio.subprocess.Process:  # noqa: ANN003
    """asyncio.create_subprocess_exec, with a child that dies with the server.

    `fed`: the child reads the server's pipe on its stdin until it closes, so it ends with the server
    by itself, without the set-up step. That step makes Python fork rather than vfork, and a fork
    holds the event loop for the copy of the server's memory map: 9-12 ms with the voice loaded
    (measured), against under a millisecond. An encoder is started on the way to first audio."""
    if fed:
        return await asyncio.create_subprocess_exec(*args, env=child_env(), **kwargs)
    return await asyncio.create_subprocess_exec(*args, preexec_fn=child_setup(memory_bytes), env=child_env(), **kwargs)


class Tail:
    """The last few kilobytes a stream carried; everything before is dropped as it arrives."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES):
        self.limit = limit
        self._parts: deque[bytes] = deque()
        self._size = 0

    def add(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        while self._size - len(self._parts[0]) >= self.limit:
            self._size -= len(self._parts.popleft())

    def text(self) -> str:
        return b"".join(self._parts)[-self.limit :].decode(errors="replace")

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while data := await stream.read(READ_BYTES):
            self.add(data)


def kill(proc: asyncio.subprocess.Process | subprocess.Popen) -> None:
    """Kill the child if it still runs.

    With os.kill, not proc.kill: Popen's kill first polls, and a child that has just exited is then
    reaped there, behind the event loop's child watcher, which logs a warning and reports 255. Until
    the watcher has reaped it, the pid is still this child's (a zombie at worst)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Kill the child if it still runs, and reap it."""
    kill(proc)
    await proc.wait()
