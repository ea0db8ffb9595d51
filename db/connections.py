"""Listener connection records, written in batches.

A burst of listeners (a class opening the link at once) would otherwise cost
one SQLite transaction per arrival and one per departure, about 2 ms of the
server's CPU each: thousands of them hold up the event loop for seconds.
Instead arrivals and departures are queued and written together in one
transaction within `batch.FLUSH_S`, arrivals first. Acknowledgements refer to these
records, so the acknowledgement log flushes this one before itself. A crash
can lose the last fraction of a second of records; at the next start every
record still open is closed anyway (they are delivery records, like the acks).
"""

import asyncio
import logging

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from .batch import BatchedLog
from .models import ConnectionRow
from .uninterrupted import uninterrupted

log = logging.getLogger(__name__)

TABLE = ConnectionRow.__table__


class ConnectionLog(BatchedLog):
    def __init__(self, session: async_sessionmaker, holder: str | None = None):
        super().__init__("connection")
        self.session = session
        self.holder = holder  # this process, as leases name it: written on each record
        self._opened: dict[str, dict] = {}  # by connection id, in arrival order
        self._closed: dict[str, int] = {}  # connection id -> disconnected_at_ms, for rows already written
        self._writing = asyncio.Lock()  # one batch at a time, so a departure is never written before its arrival

    def opened(self, conn_id: str, channel_id: int, remote: str, agent: str, now_ms: int) -> None:
        self._opened[conn_id] = {
            "id": conn_id,
            "channel_id": channel_id,
            "remote": remote[:64],
            "user_agent": agent[:256],
            "connected_at_ms": now_ms,
            "disconnected_at_ms": None,
            "holder": self.holder,
        }
        self._flush_soon()

    def closed(self, conn_id: str, now_ms: int) -> None:
        if conn_id in self._opened:  # not written yet: it goes in closed
            self._opened[conn_id]["disconnected_at_ms"] = now_ms
        else:
            self._closed[conn_id] = now_ms
            self._flush_soon()

    def pending(self, conn_id: str) -> bool:
        return conn_id in self._opened

    @uninterrupted
    async def flush(self) -> None:
        """Write everything queued (before reads of connection records or acknowledgements, and at shutdown)."""
        async with self._writing:
            opened, self._opened = list(self._opened.values()), {}
            closed, self._closed = self._closed, {}
            if not opened and not closed:
                return
            try:
                async with self.session.begin() as s:  # plain executemany on the table, no ORM bookkeeping
                    if opened:
                        await s.execute(insert(TABLE), opened)
                    if closed:
                        await s.execute(
                            update(TABLE)
                            .where(TABLE.c.id == bindparam("conn_id"))
                            .values(disconnected_at_ms=bindparam("at_ms")),
                            [{"conn_id": k, "at_ms": v} for k, v in closed.items()],
                        )
            except Exception:
                log.exception("could not write %d connection arrivals and %d departures", len(opened), len(closed))
