"""The store across a restart of its PostgreSQL server: the connections it pooled before are dead, and the first
call afterwards still works (a call that finds its connection dropped runs again on a fresh one)."""

import asyncio

from db.audio_database import DatabaseAudioStore
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


async def test_the_audio_stores_first_write_after_a_restart_succeeds(postgres_server, postgres_url, tmp_path):
    """The audio store's calls make no second attempt: a pooled connection the server closed is replaced
    as it leaves the pool."""
    store = Store(postgres_url)
    await store.create_schema()
    audio = DatabaseAudioStore(store.engine, tmp_path)
    await asyncio.gather(*(store.channels() for _ in range(4)))
    await asyncio.to_thread(postgres_server.stop)  # the loop runs meanwhile, as it would in a server
    await asyncio.to_thread(postgres_server.start)
    await audio.put("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "mp3", b"ID3")
    audio.forget("aaaaaaaaaaaaaaaa")  # read back from the database, not the cache
    assert await audio.read("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "mp3") == b"ID3"
    await store.close()
