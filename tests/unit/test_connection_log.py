"""Listener connection records are queued and written in batches to a real database (a SQLite file, or a
PostgreSQL server), arrivals before departures, and before the acknowledgements that refer to them."""

import asyncio

from sqlalchemy import func, select

from db import batch
from db.models import ConnectionRow
from db.store import Store

A, B, C = "a" * 16, "b" * 16, "c" * 16


async def new_store(url: str) -> tuple[Store, int]:
    store = Store(url)
    await store.create_schema()
    return store, (await store.create_channel("table", "0" * 64, 0)).id


async def rows(store: Store) -> int:
    async with store.session() as s:
        return await s.scalar(select(func.count()).select_from(ConnectionRow))


async def test_a_burst_of_arrivals_is_one_write_within_moments(database_url):
    store, channel = await new_store(database_url)
    for conn in (A, B, C):
        store.open_connection(conn, channel, "127.0.0.1", "test", 10)
    assert await rows(store) == 0, "queued, not yet written"
    assert await store.connection_exists(B), "a queued arrival exists for whoever asks"
    async with asyncio.timeout(30):  # written by the log itself, FLUSH_S after the first
        while await rows(store) < 3:
            await asyncio.sleep(batch.FLUSH_S)
    assert await store.connection_times(A) == (10, None)
    await store.close()


async def test_departures_are_written_after_their_arrivals(database_url):
    store, channel = await new_store(database_url)
    store.open_connection(A, channel, "127.0.0.1", "test", 10)
    store.close_connection(A, 20)  # left before its arrival was written: both go in one row
    store.open_connection(B, channel, "127.0.0.1", "test", 30)
    writing = asyncio.create_task(store.connection_log.flush())
    await asyncio.sleep(0)  # the first batch is being written...
    store.close_connection(B, 40)  # ...when B leaves: its departure must not overtake its arrival
    await store.connection_log.flush()
    await writing
    assert await store.connection_times(A) == (10, 20)
    assert await store.connection_times(B) == (30, 40)
    assert await store.connection_times(C) is None
    await store.close()


async def test_what_is_queued_is_written_at_close(database_url):
    store, channel = await new_store(database_url)
    store.open_connection(A, channel, "127.0.0.1", "test", 10)
    await store.close()
    reopened = Store(database_url)
    assert await reopened.connection_times(A) == (10, None)
    await reopened.close_stale_connections(50)  # the next start closes what was left open
    assert await reopened.connection_times(A) == (10, 50)
    await reopened.close()


async def test_nothing_is_written_after_close(database_url):
    """A listener that leaves while the server shuts down, after the store closed, opens no connection on
    the disposed engine (one that nothing would close): the next start closes its record instead."""
    store, channel = await new_store(database_url)
    store.open_connection(A, channel, "127.0.0.1", "test", 10)
    await store.close()
    store.close_connection(A, 20)
    store.open_connection(B, channel, "127.0.0.1", "test", 30)
    assert store.connection_log._flusher is None, "no write is started after close"
    await asyncio.sleep(batch.FLUSH_S * 2)
    reopened = Store(database_url)
    assert await reopened.connection_times(A) == (10, None)
    assert await reopened.connection_times(B) is None
    await reopened.close()
