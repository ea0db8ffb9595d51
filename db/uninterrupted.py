"""Database calls run to their end even when their caller is cancelled.

A task cancelled while one of its statements runs in aiosqlite's thread has its connection thrown away
by SQLAlchemy, and SQLite cannot close a connection whose statement still holds rows: the half-done
transaction keeps the file's write lock for as long as the process lives, and every other writer (the
CLI, cron, the server's own next save) fails with "database is locked" after its busy timeout. The
runner, the station and shutdown cancel tasks that are saving, so every call into the database runs
as a task of its own that cancellation does not reach; the caller's cancellation is passed on once
the call is over (statements take milliseconds, or at most the busy timeout).

Pooled connections are not pinged before use: with asyncpg a ping is three round trips (a
transaction around an empty statement), more than most of our calls. One the server closed (it
restarted) is known closed and replaced as it leaves the pool (db/store.py). One found dropped by
a call's statement makes SQLAlchemy invalidate the whole pool, and a call made here runs once more
on a fresh connection: a restart costs a failed attempt, not a failed call.
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)


def uninterrupted(call: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """For a method that opens its own connection or session: not for one given the caller's
    connection, which would then run two things at once on it."""

    @functools.wraps(call)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(_reconnecting(call, *args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_retrieve)  # a caller cancelled again leaves it to finish unwatched
            await asyncio.wait({task})
            raise

    return guarded


async def _reconnecting(call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return await call(*args, **kwargs)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        # Nothing of it was committed unless the connection dropped during the commit itself; a
        # write that did land then finds its own row (a key conflict), as it would on any retry.
        log.warning("a database connection had been dropped; trying again on a fresh one (%s)", exc.orig)
    return await call(*args, **kwargs)


def single_reads(engine: AsyncEngine) -> AsyncEngine:
    """The engine for reads of one statement on the way of a request (a token, a lease): on PostgreSQL
    outside a transaction, one round trip where BEGIN and ROLLBACK around it make three. SQLite's
    connections would switch mode through their thread, which costs more than it saves."""
    return engine if engine.dialect.name == "sqlite" else engine.execution_options(isolation_level="AUTOCOMMIT")


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a database call whose caller had gone failed", exc_info=task.exception())
