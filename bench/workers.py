"""Client load from several processes, so that no single event loop limits it.

Each worker process builds one target object (a class from the benchmark
script, pickled by reference), runs an asyncio loop, and calls the target's
coroutine methods as the coordinator asks: `await pool.call("connect", ...)`
runs `target.connect(...)` in every worker at once and returns their answers
in worker order. Commands to one worker run one after another; between them
the worker's sockets keep being served by its loop.
"""

import asyncio
import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from serverproc import raise_nofile

PRIORITIES = ("normal", "low", "idle")


def lower_priority(priority: str) -> None:
    """How much CPU a client process on the server's own cores may take from it. "normal": as much
    as the server. "low": nice 19. "idle": SCHED_IDLE, only time the server leaves, as clients on
    other machines would. Nice 19 alone does not do that: the kernel's EEVDF scheduler lets a
    reader woken by the server's send preempt it at once, two context switches per send."""
    if priority not in PRIORITIES:
        raise ValueError(f"expected a client priority among {PRIORITIES}, got {priority!r}")
    if priority == "low":
        os.nice(19)
    elif priority == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _run(conn: Connection, factory: Callable[..., Any], args: tuple, priority: str) -> None:
    raise_nofile()
    lower_priority(priority)
    asyncio.run(_serve(conn, factory(*args)))


def _receive(conn: Connection) -> tuple[str | None, tuple]:
    """The next order; the parent gone (its end of the pipe closed) means stop, not a reader that
    fires forever: a benchmark killed mid-run left its clients spinning at a third of a core each."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None, ()


async def _serve(conn: Connection, target: Any) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(_receive(conn)))
    try:
        while True:
            op, args = await inbox.get()
            if op is None:
                return
            try:
                conn.send(("ok", await getattr(target, op)(*args)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        loop.remove_reader(conn.fileno())
        if hasattr(target, "aclose"):
            await target.aclose()


class WorkerPool:
    def __init__(self, count: int, factory: Callable[..., Any], *args: Any, priority: str = "normal"):
        """`priority`: see lower_priority."""
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for index in range(count):
            ours, theirs = context.Pipe()
            proc = context.Process(
                target=_run, args=(theirs, factory, (index, *args), priority), daemon=True, name=f"bench-worker-{index}"
            )
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.conns)

    async def call(self, op: str, per_worker: Sequence[tuple] | None = None) -> list[Any]:
        """Run `op` in every worker (with that worker's arguments) and return the answers."""
        per_worker = per_worker if per_worker is not None else [()] * len(self)
        for conn, args in zip(self.conns, per_worker, strict=True):
            conn.send((op, args))
        answers = await asyncio.gather(*(asyncio.to_thread(conn.recv) for conn in self.conns))
        failures = [detail for status, detail in answers if status != "ok"]
        if failures:
            raise RuntimeError(f"a worker failed in {op}:\n{failures[0]}")
        return [detail for _, detail in answers]

    async def close(self, timeout_s: float = 20) -> None:
        for conn in self.conns:
            try:
                conn.send((None, ()))
            except OSError:
                pass
        for proc in self.procs:
            await asyncio.to_thread(proc.join, timeout_s)
            if proc.is_alive():
                proc.terminate()
                await asyncio.to_thread(proc.join, 5)


def split(total: int, parts: int) -> list[int]:
    """`total` spread as evenly as possible over `parts`."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
