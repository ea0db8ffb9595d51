"""The store across a restart of its PostgreSQL server: the connections it pooled before are dead, and the first
call afterwards still works (each pooled connection is checked before use)."""

from db.store import Store


async def test_the_first_call_after_the_database_server_restarted_succeeds(postgres_server, postgres_url):
    """Stopped and started again, the server has dropped every pooled connection; the store's next calls work."""
    store = Store(postgres_url)
    await store.create_schema()
    await store.create_channel("table", "digest", 0)
    postgres_server.stop()
    postgres_server.start()
    assert [row.name for row in await store.channels()] == ["table"]
    assert await store.token_hash("table") == "digest"
    await store.close()
