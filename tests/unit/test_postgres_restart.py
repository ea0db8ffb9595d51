"""The store across a restart of its PostgreSQL server: the connections it pooled before are dead, and the first
call afterwards still works (a call that finds its connection dropped runs again on a fresh one)."""

import asyncio

from db.store import Store


async def test_the_first_call_after_the_database_server_restarted_succeeds(postgres_server, postgres_url):
    """Stopped and started again, the server has dropped every pooled connection; the store's next calls work."""
    store = Store(postgres_url)
    await store.create_schema()
    await store.create_channel("table", "digest", 0)
    await asyncio.gather(*(store.channels() for _ in range(4)))  # several connections in the pool
    assert store.engine.pool.checkedin() > 1
    postgres_server.stop()
    postgres_server.start()
    assert [row.name for row in await store.channels()] == ["table"]
    assert await store.token_hash("table") == "digest"
    assert await asyncio.gather(*(store.token_hash("table") for _ in range(4))) == ["digest"] * 4
    await store.close()
