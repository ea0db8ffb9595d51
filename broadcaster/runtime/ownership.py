"""Who runs what: one server per database, or, in a cluster, one owner per channel.

Outside cluster mode, every channel's clock runs in the one `broadcaster serve` process. A second
server on the same database would run a second clock for each channel: two requests on the air
at once, listeners of the two hearing different timelines, both writing the same rows. So a
server holds the "server" lease while it runs and a second one refuses to start, saying who holds
it. The lease is renewed every third of its life; a server killed without a chance to release it
is recognised at once on the same machine (its process is gone) and otherwise lapses.

In a cluster each process instead keeps its share of the channels with one lease per channel
(`ChannelOwnership`; the decisions are in broadcaster/core/ownership.py).
"""

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from broadcaster.core.ownership import plan_round
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


# -- channels in a cluster -------------------------------------------------------------------

CHANNEL = "channel:"
NODE = "node:"

Gain = Callable[[str, Lease], Awaitable[None]]  # start running the channel under this lease
Lose = Callable[[str], Awaitable[None]]  # stop at once: another process may run it now


class ChannelOwnership:
    """Keeps this process's share of the channels, one lease each, round after round.

    `channels()` lists every channel; `idle()` the held ones with nothing on the air (the only ones
    given back to rebalance). `on_gain` and `on_lose` start and stop running a channel. The clock
    is monotonic milliseconds; tests pass their own."""

    def __init__(
        self,
        leases: Leases,
        channels: Callable[[], Awaitable[list[str]]],
        idle: Callable[[], set[str]],
        on_gain: Gain,
        on_lose: Lose,
        lease_ms: int,
        url: str = "",
        clock: Callable[[], float] = lambda: time.monotonic() * 1000,
        holder: str = "",
    ):
        self.leases, self.channels, self.idle = leases, channels, idle
        self.on_gain, self.on_lose = on_gain, on_lose
        self.lease_ms, self.url, self.clock = lease_ms, url, clock
        self.holder = holder or holder_id()
        self.held: dict[str, Lease] = {}
        self.renewed_at: dict[str, float] = {}  # when the last successful renewal was sent
        self._node: Lease | None = None
        self._dead: dict[str, str] = {}  # channel -> its holder, a process on this machine that is gone

    async def run(self) -> None:
        """Rounds, every third of the lease, until cancelled."""
        while True:
            started = self.clock()
            try:
                await self.round()
            except Exception:  # a round must never end the ownership loop
                log.exception("ownership round failed")
            elapsed_s = (self.clock() - started) / 1000
            await asyncio.sleep(max(0.0, self.lease_ms / 3000 - elapsed_s))

    async def let_go(self, name: str, why: str) -> None:
        """Hand a held channel over now (a write of it was fenced off, or its announcement refused)."""
        if name in self.held:
            await self._drop(name, why)

    async def round(self) -> None:
        """One round: announce this process, then renew, step down, release and acquire as planned."""
        now = self.clock()
        try:
            await self._announce()
            names = await self.channels()
            others = {n.removeprefix(CHANNEL): h for n, h in (await self.leases.live(CHANNEL)).items()}
            # A holder on this machine whose process is gone (killed) is replaced at once, not after its lease.
            self._dead = {name: h.holder for name, h in others.items() if h.holder != self.holder and gone(h.holder)}
            elsewhere = {name for name, h in others.items() if h.holder != self.holder and name not in self._dead}
            processes = sum(1 for h in (await self.leases.live(NODE)).values() if not gone(h.holder))
        except Exception:  # the database is away: only stepping down can be decided
            log.warning("ownership round could not read the leases", exc_info=True)
            names, elsewhere, processes = list(self.held), set(), 1
        plan = plan_round(
            self.lease_ms, now, self.renewed_at, names, elsewhere, processes, self.idle() & set(self.held)
        )
        for name in plan.step_down:
            await self._drop(name, "could not renew its lease in time")
        for name in plan.renew:
            await self._renew(name, now)
        for name in plan.release:
            await self._drop(name, "over this process's share")
        for name in plan.acquire:
            await self._acquire(name, now)

    async def _announce(self) -> None:
        lease = await self.leases.acquire(NODE + self.holder, self.holder, self.lease_ms, self.url)
        self._node = lease

    async def _renew(self, name: str, sent_at: float) -> None:
        if name not in self.held:
            return  # let go meanwhile
        try:
            renewed = await self.leases.renew(self.held[name], self.lease_ms)
        except Exception:
            log.warning("could not renew the lease of %s", name, exc_info=True)
            return  # tried again next round; stepped down once too late
        if renewed is None:
            # How late, for whoever reads the log: a renewal answered past the lease lapses it.
            since_ms = sent_at - self.renewed_at.get(name, sent_at)
            took_ms = self.clock() - sent_at
            why = f"its lease was taken or lapsed (round began {since_ms:.0f} ms after the last renewal, answered {took_ms:.0f} ms after that)"
            await self._drop(name, why)
            return
        if name in self.held:
            self.held[name], self.renewed_at[name] = renewed, sent_at

    async def _acquire(self, name: str, sent_at: float) -> None:
        try:
            dead = self._dead.get(name, "")
            lease = await self.leases.acquire(CHANNEL + name, self.holder, self.lease_ms, self.url, dead=dead)
        except Exception:
            log.warning("could not take the lease of %s", name, exc_info=True)
            return
        if lease is None:
            return  # another process was quicker
        self.held[name], self.renewed_at[name] = lease, sent_at
        log.info("running channel %s (epoch %d)", name, lease.epoch)
        try:
            await self.on_gain(name, lease)
        except Exception:  # e.g. the database went away while the channel was restored
            log.exception("could not start channel %s", name)
            await self._drop(name, "it could not be started here")

    async def _drop(self, name: str, why: str) -> None:
        lease = self.held.pop(name, None)
        if lease is None:
            return  # let go meanwhile
        self.renewed_at.pop(name, None)
        log.warning("no longer running channel %s: %s", name, why)
        await self.on_lose(name)
        try:
            await self.leases.release(lease)  # so the next owner need not wait for it to lapse
        except Exception:
            log.info("could not release the lease of %s; it lapses by itself", name)

    async def close(self) -> None:
        """At a clean stop: hand every channel over at once."""
        for name in list(self.held):
            await self._drop(name, "this server is stopping")
        if self._node is not None:
            try:
                await self.leases.release(self._node)
            except Exception:
                log.info("could not release this process's node lease; it lapses by itself")
