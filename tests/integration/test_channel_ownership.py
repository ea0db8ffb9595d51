"""Channels spread over processes by lease, one owner each, handed over when an owner stops or stalls.

Two ChannelOwnership instances on one real database (SQLite and PostgreSQL) stand for two processes."""

import asyncio

import pytest

from broadcaster.runtime.ownership import ChannelOwnership
from db.leases import LeaseLost, Leases
from db.store import Store

LEASE_MS = 1000
CHANNELS = ["a", "b", "c", "d"]


class Process:
    """One process's ownership, recording what it runs."""

    def __init__(self, leases: Leases, idle: bool = True, **clock):
        self.running: dict[str, int] = {}  # channel -> epoch
        self.gained: list[tuple[str, int]] = []
        self.everything_idle = idle
        self.own = ChannelOwnership(leases, self._channels, self._idle, self._gain, self._lose, LEASE_MS, **clock)

    async def _channels(self) -> list[str]:
        return CHANNELS

    def _idle(self) -> set[str]:
        return set(self.running) if self.everything_idle else set()

    async def _gain(self, name: str, lease) -> None:
        self.running[name] = lease.epoch
        self.gained.append((name, lease.epoch))

    async def _lose(self, name: str) -> None:
        del self.running[name]


@pytest.fixture
async def leases(database_url):
    store = Store(database_url)
    await store.create_schema()
    yield Leases(store.engine)
    await store.close()


def disjoint(*processes: Process) -> bool:
    seen: set[str] = set()
    for process in processes:
        if seen & set(process.running):
            return False
        seen |= set(process.running)
    return True


async def test_channels_spread_when_a_second_process_arrives(leases):
    """Alone, A runs all four; once B is live, A gives two back and B takes them: never both on one."""
    a, b = Process(leases), Process(leases)
    await a.own.round()
    assert sorted(a.running) == CHANNELS
    for _ in range(3):
        await b.own.round()
        assert disjoint(a, b)
        await a.own.round()
        assert disjoint(a, b)
    assert len(a.running) == 2 and len(b.running) == 2
    for _name, epoch in b.gained:
        assert epoch >= 2  # each handed over: a new epoch


async def test_a_dead_owners_channels_are_taken_within_a_lease(leases):
    """A stops renewing (killed); within a lease and a round, B runs every channel, each at a new epoch."""
    a, b = Process(leases), Process(leases, idle=False)
    await a.own.round()
    epochs = dict(a.running)
    await b.own.round()  # nothing free yet
    assert b.running == {}
    await asyncio.sleep(LEASE_MS / 1000 + 0.2)
    await b.own.round()
    assert sorted(b.running) == CHANNELS
    assert all(b.running[name] == epochs[name] + 1 for name in CHANNELS)


async def test_a_stalled_owner_steps_down_and_its_writes_are_refused(leases):
    """A is paused past its lease while B takes over; on waking, A steps down before renewing, and a
    write fenced with A's old lease is refused."""
    a, b = Process(leases), Process(leases, idle=False)
    await a.own.round()
    stale = a.own.held["a"]
    await asyncio.sleep(LEASE_MS / 1000 + 0.2)  # A is paused (SIGSTOP): no rounds
    await b.own.round()
    assert sorted(b.running) == CHANNELS
    await a.own.round()  # A wakes up
    assert a.running == {} and disjoint(a, b)
    async with leases.engine.begin() as conn:
        with pytest.raises(LeaseLost):
            await leases.fence(conn, stale)
        await leases.fence(conn, b.own.held["a"])


async def test_a_renewal_that_reaches_the_database_after_the_lease_lapsed_steps_down_and_says_how_late(leases, caplog):
    """A's round comes in time by its own clock, but its renewals reach the database after the leases
    lapsed (a stalled pool, a database slow to answer): A stops running its channels, and the log says
    how long after the last renewal the round began."""
    now_ms = [0.0]
    a = Process(leases, clock=lambda: now_ms[0])
    await a.own.round()
    await asyncio.sleep(LEASE_MS / 1000 + 0.2)
    now_ms[0] = 300.0
    await a.own.round()
    assert a.running == {}
    assert "taken or lapsed (round began 300 ms after the last renewal" in caplog.text


async def test_a_clean_stop_hands_channels_over_at_once(leases):
    """close() releases every channel, so the next process takes them without waiting for a lapse."""
    a, b = Process(leases), Process(leases)
    await a.own.round()
    await a.own.close()
    assert a.running == {}
    await b.own.round()
    assert sorted(b.running) == CHANNELS
