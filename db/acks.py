"""Acknowledgements, written in batches.

Every listener acknowledges every chunk, so a thousand listeners make a thousand
acknowledgements per sentence. One transaction each would keep the server busy
with SQLite. Instead an acknowledgement is checked for a repeat in memory (the
connections that acknowledged each recent chunk, loaded from the database once
per chunk, by the first of the chunk's acknowledgements while the others wait
for that load) and queued; the queue is written in one transaction within
`batch.FLUSH_S`. A crash can lose the last fraction of a second of acknowledgements;
they are delivery records, and playback never depends on them.
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from broadcaster.errors import ServerStopping

from .batch import BatchedLog
from .models import DeliveryRow
from .uninterrupted import uninterrupted

log = logging.getLogger(__name__)

RECENT_CHUNKS = 64  # chunks whose acknowledging connections are kept in memory


class AckLog(BatchedLog):
    def __init__(self, session: async_sessionmaker, dialect: str, before: Callable[[], Awaitable[None]] | None = None):
        super().__init__("ack")
        self.session = session
        self._insert_statement = _insert_skipping_repeats(dialect)
        self.before = before  # written first: what the acknowledgements refer to
        self._pending: list[dict] = []
        self._seen: OrderedDict[str, set[str]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[set[str]]] = {}

    async def record(self, chunk_id: str, connection_id: str | None, via: str, now_ms: int) -> bool:
        """Queue one acknowledgement; False if this connection had already acknowledged the chunk.
        In memory but for the chunk's first read, which runs to its end whoever waits (`_load`).
        Refused once the log is closed (the server is stopping): that read would open a connection
        on the disposed engine that nothing closes."""
        if self._shut:
            raise ServerStopping("the server is shutting down; acknowledge this chunk again once it is back", 1)
        if connection_id is not None and not await self._first_from(chunk_id, connection_id):
            return False
        self._pending.append({"chunk_id": chunk_id, "connection_id": connection_id, "via": via, "acked_at_ms": now_ms})
        self._flush_soon()
        return True

    async def _first_from(self, chunk_id: str, connection_id: str) -> bool:
        seen = self._seen.get(chunk_id)
        if seen is None:
            seen = await self._load(chunk_id)
        self._seen.move_to_end(chunk_id)
        if connection_id in seen:
            return False
        seen.add(connection_id)
        return True

    async def _load(self, chunk_id: str) -> set[str]:
        """The chunk's set of acknowledging connections, read once however many acknowledgements
        ask at the same moment (every listener acknowledges a chunk as it ends)."""
        loading = self._loading.get(chunk_id)
        if loading is None:
            loading = self._loading[chunk_id] = asyncio.ensure_future(self._stored_connections(chunk_id))
            loading.add_done_callback(lambda _: self._loading.pop(chunk_id, None))
        stored = await asyncio.shield(loading)  # one waiter leaving does not cancel the others' read
        seen = self._seen.get(chunk_id)
        if seen is None:  # the first waiter to wake keeps the set; the others find it
            seen = self._seen[chunk_id] = set(stored)
            while len(self._seen) > RECENT_CHUNKS:
                self._seen.popitem(last=False)
        return seen

    async def _stored_connections(self, chunk_id: str) -> set[str]:
        async with self.session() as s:
            rows = await s.execute(select(DeliveryRow.connection_id).where(DeliveryRow.chunk_id == chunk_id))
            return {row[0] for row in rows if row[0] is not None}

    @uninterrupted
    async def flush(self) -> None:
        """Write everything queued (at once, before reads of acknowledgements and at shutdown)."""
        if self.before is not None and self._pending:
            await self.before()
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self._insert(batch)
        except IntegrityError:  # a chunk purged meanwhile fails the batch: keep the rest
            for row in batch:
                try:
                    await self._insert([row])
                except IntegrityError:
                    log.info("acknowledgement of chunk %s dropped: the chunk is gone", row["chunk_id"])
        except Exception:
            log.exception("could not write %d acknowledgements", len(batch))

    async def _insert(self, rows: list[dict]) -> None:
        async with self.session.begin() as s:
            await s.execute(self._insert_statement, rows)


def _insert_skipping_repeats(dialect: str):  # noqa: ANN202
    """An acknowledgement already stored (this connection, this chunk) is skipped, in the database's own words;
    elsewhere a repeat fails its batch like a purged chunk does."""
    insert_for = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert_for is None:
        return insert(DeliveryRow)
    return insert_for(DeliveryRow).on_conflict_do_nothing()
