"""One server per database unless it is a cluster: the server lease.

Outside cluster mode, every channel's clock runs in the one `broadcaster serve` process. A second
server on the same database would run a second clock for each channel: two requests on the air
at once, listeners of the two hearing different timelines, both writing the same rows. So a
server holds the "server" lease while it runs and a second one refuses to start, saying who holds
it. The lease is renewed every third of its life; a server killed without a chance to release it
is recognised at once on the same machine (its process is gone) and otherwise lapses.
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable

from broadcaster.errors import BroadcasterError
from db.leases import Holding, Lease, Leases

log = logging.getLogger(__name__)

SERVER = "server"
SERVER_LEASE_MS = 10_000


class AnotherServer(BroadcasterError):
    """A second server was started on a database that one already serves."""


def holder_id() -> str:
    """This process, as leases name it: host, pid, and a random part (a pid is reused in time)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def gone(holder: str) -> bool:
    """Whether `holder` names a process on this machine that no longer runs."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        return False
    return False


class ServerLease:
    def __init__(self, leases: Leases, on_lost: Callable[[], None], ttl_ms: int = SERVER_LEASE_MS):
        self.leases, self.on_lost, self.ttl_ms = leases, on_lost, ttl_ms
        self.holder = holder_id()
        self.lease: Lease | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Take the server lease, or raise AnotherServer saying who has it."""
        self.lease = await self.leases.acquire(SERVER, self.holder, self.ttl_ms)
        if self.lease is None:
            holding = await self.leases.current(SERVER)
            if holding is not None and gone(holding.holder):
                self.lease = await self.leases.acquire(SERVER, self.holder, self.ttl_ms, dead=holding.holder)
            if self.lease is None:
                raise AnotherServer(_refusal(holding))
        self._task = asyncio.create_task(self._renew(), name="server-lease")

    async def _renew(self) -> None:
        while self.lease is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.ttl_ms / 3000)
            if self._stopping.is_set():
                return
            try:
                renewed = await self.leases.renew(self.lease, self.ttl_ms)
            except Exception:  # the database is away for a moment; the next round tries again
                log.warning("could not renew the server lease", exc_info=True)
                continue
            if renewed is None:
                log.critical("the server lease lapsed and may be held by another server: stopping")
                self.lease = None
                self.on_lost()
                return
            self.lease = renewed

    async def stop(self) -> None:
        """Stop renewing and release. The renewal is never cancelled mid-statement: a statement cut
        off inside its transaction can leave SQLite's write lock held until the connection goes."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self.lease is not None:
            try:
                await self.leases.release(self.lease)
            except Exception:  # it lapses by itself within the lease time
                log.warning("could not release the server lease", exc_info=True)
            self.lease = None


def _refusal(holding: Holding | None) -> str:
    who = f"{holding.holder.rsplit(':', 1)[0]} (host:pid)" if holding else "another process"
    return (
        f"another broadcaster server, {who}, is already serving this database. One server at a time "
        "may serve a database unless they form a cluster: a PostgreSQL [server] database_url and "
        "[cluster] redis_url. CLI commands such as 'channel create' work beside a running server."
    )
