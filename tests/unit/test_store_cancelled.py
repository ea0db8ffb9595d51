"""A database call whose caller is cancelled still runs to its end. Cut off mid-statement, SQLAlchemy
throws the connection away while SQLite is still running the statement; one that still had rows to give
(a DELETE ... RETURNING, a SELECT after a write) left the file's write lock held for as long as the
process lived, and every other writer (the CLI, cron, the server itself) failed with "database is
locked". Real SQLite files; the write is made to wait on another connection's lock so that the
cancellation lands while the statement runs."""

import asyncio
import gc
import sqlite3

from sqlalchemy import text

from broadcaster.core.ids import new_id
from broadcaster.core.model import Request
from db.store import Store


async def made(tmp_path) -> tuple[Store, str]:
    path = tmp_path / "broadcaster.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.create_schema()
    channel_id = (await store.create_channel("table", "digest", 0)).id
    for _ in range(3):
        await store.insert_request(Request(new_id(), "table", "Hi.", ["Hi."], 0), channel_id)
    return store, str(path)


def can_write(path: str) -> bool:
    other = sqlite3.connect(path, timeout=1, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("COMMIT")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


async def cancelled_while_waiting_for_the_lock(path: str, call) -> asyncio.Task:
    """Start `call()` while another connection holds the write lock, cancel it while its statement
    waits, then let the lock go: the statement runs on in SQLite's thread."""
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    task = asyncio.create_task(call())
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.sleep(0.1)
    await asyncio.to_thread(blocker.execute, "COMMIT")
    blocker.close()
    return task


async def test_a_delete_cancelled_mid_statement_finishes_and_leaves_the_file_writable(tmp_path):
    store, path = await made(tmp_path)
    try:
        task = await cancelled_while_waiting_for_the_lock(path, lambda: store.delete_channel("table"))
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done and task.cancelled(), "the caller's cancellation is passed on once the call is over"
        assert await asyncio.to_thread(can_write, path), "the write lock is free"
        assert await store.channel("table") is None, "the delete that had begun went through whole"
        assert await store.create_channel("again", "digest", 0), "and the store itself writes on"
    finally:
        await store.close()


async def test_a_save_cancelled_mid_statement_leaves_the_file_writable(tmp_path):
    store, path = await made(tmp_path)
    try:
        channel_id = await store.channel_id("table")
        line, _ = await store.load_line(channel_id, "table")
        task = await cancelled_while_waiting_for_the_lock(path, lambda: store.save(line))
        await asyncio.wait({task}, timeout=5)
        assert task.done()
        assert await asyncio.to_thread(can_write, path)
    finally:
        await store.close()


async def test_a_call_cancelled_twice_still_finishes_in_the_background(tmp_path):
    store, path = await made(tmp_path)
    try:
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(store.delete_channel("table"))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.sleep(0.1)
        task.cancel()  # impatient: the caller gives up waiting, the statement still runs to its end
        await asyncio.wait({task}, timeout=1)
        assert task.cancelled()
        await asyncio.to_thread(blocker.execute, "COMMIT")
        blocker.close()
        for _ in range(50):
            if await asyncio.to_thread(can_write, path) and await store.channel("table") is None:
                break
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(can_write, path)
        assert await store.channel("table") is None
    finally:
        await store.close()


async def test_a_call_still_under_way_at_close_gives_its_connection_back_before_the_pool_goes(tmp_path):
    """A read shared by several requests (or a write whose caller left) may outlive the handler that
    asked; closing the store waits for it, so its connection is closed with the pool, not leaked
    (aiosqlite warns of a connection garbage-collected unclosed: an error in this suite)."""
    store, _ = await made(tmp_path)
    connection = await store.engine.connect()
    await connection.execute(text("SELECT 1"))
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.05)
    assert not closing.done(), "the store closed with a connection still out"
    await connection.close()
    await closing
    gc.collect()  # an unclosed aiosqlite connection would warn here, and warnings are errors
