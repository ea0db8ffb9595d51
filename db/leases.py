"""Leases: who runs a thing (the server on one database, a channel's clock in a cluster), with fencing.

A lease row is acquired and renewed in one statement that reads the time from the database
itself, so holders on machines whose clocks disagree still agree on who holds it. Its `epoch`
grows whenever the lease changes hands or lapses, and a holder proves it still holds the lease
inside each write (`fence`): a holder that was paused past its lease (SIGSTOP, swap, a long
collection) finds its writes refused rather than overwriting its successor's.
"""

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broadcaster.errors import BroadcasterError

from .uninterrupted import single_reads, uninterrupted

# The database's clock in integer milliseconds, as each dialect spells it.
NOW_MS = {
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
}

# Taken when free, lapsed, or already ours; the epoch moves on unless it is ours and still live.
# `:dead` names a holder known to be gone (a crashed process on this host), taken at once.
ACQUIRE = """
INSERT INTO leases (name, holder, holder_url, epoch, expires_at_ms)
VALUES (:name, :holder, :url, 1, {now} + :ttl_ms)
ON CONFLICT (name) DO UPDATE SET
    epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at_ms >= {now}
                 THEN leases.epoch ELSE leases.epoch + 1 END,
    holder = excluded.holder, holder_url = excluded.holder_url, expires_at_ms = excluded.expires_at_ms
WHERE leases.holder = excluded.holder OR leases.expires_at_ms < {now} OR leases.holder = :dead
RETURNING epoch, expires_at_ms
"""
RENEW = """
UPDATE leases SET expires_at_ms = {now} + :ttl_ms
WHERE name = :name AND holder = :holder AND epoch = :epoch AND expires_at_ms >= {now}
RETURNING expires_at_ms
"""
# Inside a write's transaction: the row stays locked to commit (PostgreSQL), so a successor's
# takeover waits for this write instead of slipping in between the check and the write.
FENCE = """
UPDATE leases SET epoch = epoch
WHERE name = :name AND holder = :holder AND epoch = :epoch AND expires_at_ms >= {now}
"""
# Released by lapsing it, not deleting it: the next holder's epoch must still be higher than every
# earlier one, since announcements are fenced by comparing epochs alone.
RELEASE = "UPDATE leases SET expires_at_ms = 0 WHERE name = :name AND holder = :holder AND epoch = :epoch"
CURRENT = "SELECT holder, holder_url, epoch, expires_at_ms, {now} AS now_ms FROM leases WHERE name = :name"
LIVE = """
SELECT name, holder, holder_url, epoch, expires_at_ms - {now} AS remaining_ms FROM leases
WHERE substr(name, 1, length(:prefix)) = :prefix AND expires_at_ms >= {now}
"""


class LeaseLost(BroadcasterError):
    """A holder acted on a lease it no longer holds: the write is refused where it lands."""


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    epoch: int
    expires_at_ms: int  # by the database's clock
    holder_url: str = ""


@dataclass(frozen=True)
class Holding:
    """Someone else's lease, as read: who, where, and how long it has left by the database's clock."""

    holder: str
    holder_url: str
    epoch: int
    remaining_ms: int


class Leases:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._reads = single_reads(engine)
        now = NOW_MS.get(engine.dialect.name)
        if now is None:
            raise BroadcasterError(f"expected a SQLite or PostgreSQL database for leases, got {engine.dialect.name}")
        self._sql = {
            key: text(sql.format(now=now))
            for key, sql in {
                "acquire": ACQUIRE,
                "renew": RENEW,
                "fence": FENCE,
                "release": RELEASE,
                "current": CURRENT,
                "live": LIVE,
            }.items()
        }

    @uninterrupted
    async def acquire(self, name: str, holder: str, ttl_ms: int, url: str = "", dead: str = "") -> Lease | None:
        """The lease, if it was free, lapsed, ours, or held by `dead`; None while someone else holds it."""
        params = {"name": name, "holder": holder, "url": url, "ttl_ms": ttl_ms, "dead": dead or None}
        async with self.engine.begin() as conn:
            row = (await conn.execute(self._sql["acquire"], params)).first()
        return None if row is None else Lease(name, holder, row.epoch, row.expires_at_ms, url)

    @uninterrupted
    async def renew(self, lease: Lease, ttl_ms: int) -> Lease | None:
        """The lease with a new expiry, or None if it lapsed or changed hands (the holder must step down)."""
        params = {"name": lease.name, "holder": lease.holder, "epoch": lease.epoch, "ttl_ms": ttl_ms}
        async with self.engine.begin() as conn:
            row = (await conn.execute(self._sql["renew"], params)).first()
        if row is None:
            return None
        return Lease(lease.name, lease.holder, lease.epoch, row.expires_at_ms, lease.holder_url)

    @uninterrupted
    async def release(self, lease: Lease) -> None:
        """Give the lease up (at a clean stop), so a successor need not wait for it to lapse."""
        async with self.engine.begin() as conn:
            await conn.execute(self._sql["release"], {"name": lease.name, "holder": lease.holder, "epoch": lease.epoch})

    @uninterrupted
    async def current(self, name: str) -> Holding | None:
        """Who holds the lease now (None: nobody, or it lapsed)."""
        async with self._reads.connect() as conn:
            row = (await conn.execute(self._sql["current"], {"name": name})).first()
        if row is None or row.expires_at_ms < row.now_ms:
            return None
        return Holding(row.holder, row.holder_url, row.epoch, row.expires_at_ms - row.now_ms)

    @uninterrupted
    async def live(self, prefix: str) -> dict[str, Holding]:
        """Every live lease whose name starts with `prefix`, in one read."""
        async with self._reads.connect() as conn:
            rows = (await conn.execute(self._sql["live"], {"prefix": prefix})).all()
        return {row.name: Holding(row.holder, row.holder_url, row.epoch, row.remaining_ms) for row in rows}

    async def fence(self, conn: AsyncConnection, lease: Lease) -> None:
        """Inside a write's transaction: raise LeaseLost unless `lease` is still held and live."""
        params = {"name": lease.name, "holder": lease.holder, "epoch": lease.epoch}
        if (await conn.execute(self._sql["fence"], params)).rowcount != 1:
            raise LeaseLost(f"lease {lease.name!r} at epoch {lease.epoch} is no longer held by {lease.holder}")
