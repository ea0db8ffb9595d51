"""Acknowledgements are deduplicated in memory and written in batches to a real database: a SQLite file, or a
PostgreSQL server."""

import asyncio

import pytest
from sqlalchemy import func, select

from broadcaster.core.model import Chunk, Request
from broadcaster.errors import ServerStopping
from db.models import DeliveryRow
from db.store import Store

CHUNK = "c" * 16


async def store_with_a_chunk(url: str) -> Store:
    store = Store(url)
    await store.create_schema()
    row = await store.create_channel("table", "0" * 64, 0)
    request = Request("r" * 16, "table", "Hi.", ["Hi."], 0)
    await store.insert_request(request, row.id)
    request.chunks.append(Chunk(CHUNK, request.request_id, 0, "Hi.", 500, 0))
    await store.save([request])
    for conn in ("a" * 16, "b" * 16):
        store.open_connection(conn, row.id, "127.0.0.1", "test", 0)
    return store


async def count(store: Store) -> int:
    async with store.session() as s:
        return await s.scalar(select(func.count()).select_from(DeliveryRow))


async def test_repeats_are_answered_from_memory_and_rows_arrive_in_one_batch(database_url):
    store = await store_with_a_chunk(database_url)
    results = await asyncio.gather(*(store.record_ack(CHUNK, conn, "ws", 1) for conn in ["a" * 16] * 3 + ["b" * 16]))
    assert sorted(results) == [False, False, True, True]
    assert await count(store) == 0  # not yet written
    await store.ack_log.flush()
    assert await count(store) == 2
    assert await store.record_ack(CHUNK, None, "http", 2)  # anonymous: every one counts
    await store.close()


async def test_a_repeat_after_a_restart_is_still_recognized(database_url):
    store = await store_with_a_chunk(database_url)
    assert await store.record_ack(CHUNK, "a" * 16, "ws", 1)
    await store.close()  # writes what was queued
    reopened = Store(database_url)
    assert not await reopened.record_ack(CHUNK, "a" * 16, "http", 2)
    assert [c for c, _ in await reopened.acks("a" * 16)] == [CHUNK]
    await reopened.close()


async def test_a_burst_of_acknowledgements_of_a_new_chunk_reads_the_database_once(database_url):
    store = await store_with_a_chunk(database_url)
    log = store.ack_log
    reads = []
    stored_connections = log._stored_connections

    async def counted(chunk_id: str) -> set[str]:
        reads.append(chunk_id)
        return await stored_connections(chunk_id)

    log._stored_connections = counted
    connections = ["a" * 16, "b" * 16] * 50
    results = await asyncio.gather(*(store.record_ack(CHUNK, conn, "ws", 1) for conn in connections))
    assert reads == [CHUNK], f"expected one read for 100 acknowledgements of one chunk, got {len(reads)}"
    assert sorted(results).count(True) == 2, "each connection's first acknowledgement counts, once"
    await store.ack_log.flush()
    assert await count(store) == 2
    await store.close()


async def test_an_acknowledgement_after_close_is_refused_without_touching_the_database(database_url):
    """One arriving while the server stops, after the store closed: refused (503, try again), and no read is
    made on the disposed engine (it would open a connection that nothing closes)."""
    store = await store_with_a_chunk(database_url)
    await store.close()
    with pytest.raises(ServerStopping):
        await store.record_ack(CHUNK, "a" * 16, "ws", 1)
    assert store.ack_log._pending == [] and store.ack_log._loading == {}
    reopened = Store(database_url)
    assert await count(reopened) == 0
    await reopened.close()
