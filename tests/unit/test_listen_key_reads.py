"""A private channel's listen key is read from the database (SQLite or PostgreSQL) once per burst of fetches, not
once per fetch."""

import asyncio

from broadcaster.auth import Admission, Credential, hash_token
from broadcaster.errors import Unauthorized
from broadcaster.runtime.accounts import Gate, create_channel, set_listen_key
from db.store import Store


async def test_a_burst_of_listener_checks_reads_the_key_once_and_each_check_still_decides(database_url):
    store = Store(database_url)
    await store.create_schema()
    await create_channel(store, "table")
    key = await set_listen_key(store, "table", private=True)
    reads = []
    channel = store.channel

    async def counted(name: str):
        reads.append(name)
        return await channel(name)

    store.channel = counted
    gate = Gate(store)
    checks = [gate.check_listener("table", key if i % 2 else "wrong", None) for i in range(200)]
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert reads == ["table"], f"expected one read for 200 checks, got {len(reads)}"
    assert all(r == Credential(Admission.LISTEN_KEY, hash_token(key)) for r in results[1::2]), "the right key passes"
    assert all(isinstance(r, Unauthorized) for r in results[0::2]), "a wrong key is refused"
    await store.close()


async def test_a_failed_read_fails_the_checks_waiting_on_it_and_the_next_check_reads_again(database_url):
    store = Store(database_url)
    await store.create_schema()
    await create_channel(store, "table")
    channel = store.channel
    failures = [OSError("disk I/O error")]

    async def flaky(name: str):
        await asyncio.sleep(0)
        if failures:
            raise failures.pop()
        return await channel(name)

    store.channel = flaky
    gate = Gate(store)
    results = await asyncio.gather(
        *(gate.check_listener("table", None, None) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, OSError) for r in results)
    await gate.check_listener("table", None, None)  # public channel: passes once the read works
    await store.close()
