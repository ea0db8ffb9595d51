"""Leases on the database's own clock (SQLite and PostgreSQL): one holder at a time, a new epoch on every change of hands, fenced writes."""

import asyncio
import logging

import pytest

from db.leases import LeaseLost, Leases
from db.store import Store


@pytest.fixture
async def leases(database_url):
    store = Store(database_url)
    await store.create_schema()
    yield Leases(store.engine)
    await store.close()


async def test_a_held_lease_is_refused_to_others_and_renewed_by_its_holder(leases):
    """While A holds it, B gets nothing; A's renewal keeps the epoch and pushes the expiry on."""
    a = await leases.acquire("channel:x", "A", ttl_ms=5000, url="http://a")
    assert a is not None and a.epoch == 1
    assert await leases.acquire("channel:x", "B", ttl_ms=5000) is None
    renewed = await leases.renew(a, ttl_ms=8000)
    assert renewed is not None and renewed.epoch == 1 and renewed.expires_at_ms > a.expires_at_ms
    holding = await leases.current("channel:x")
    assert (holding.holder, holding.holder_url, holding.epoch) == ("A", "http://a", 1)
    assert 0 < holding.remaining_ms <= 8000


async def test_a_lapsed_lease_goes_to_the_next_with_a_new_epoch_and_the_old_holder_is_fenced(leases):
    """A stops renewing; B takes it at epoch 2; A's renewal and A's fenced write are refused, B's pass."""
    a = await leases.acquire("channel:x", "A", ttl_ms=200)
    await asyncio.sleep(0.3)
    assert await leases.current("channel:x") is None
    b = await leases.acquire("channel:x", "B", ttl_ms=5000)
    assert b is not None and b.epoch == a.epoch + 1
    assert await leases.renew(a, ttl_ms=5000) is None
    async with leases.engine.begin() as conn:
        with pytest.raises(LeaseLost, match="epoch 1"):
            await leases.fence(conn, a)
        await leases.fence(conn, b)


async def test_a_holder_past_its_lease_is_fenced_even_before_anyone_takes_over(leases):
    """A lapsed lease fences its holder's writes at once, not only once a successor exists."""
    a = await leases.acquire("channel:x", "A", ttl_ms=150)
    await asyncio.sleep(0.25)
    async with leases.engine.begin() as conn:
        with pytest.raises(LeaseLost):
            await leases.fence(conn, a)


async def test_taking_back_a_lapsed_lease_moves_the_epoch_on_even_for_the_same_holder(leases):
    """Writes made under the lapsed tenure cannot pass as the new one's."""
    first = await leases.acquire("channel:x", "A", ttl_ms=100)
    await asyncio.sleep(0.2)
    second = await leases.acquire("channel:x", "A", ttl_ms=5000)
    assert second.epoch == first.epoch + 1


async def test_a_dead_holder_is_taken_over_at_once_and_a_release_frees_the_lease(leases):
    """`dead` names a holder known to be gone; a released lease is free for anyone."""
    a = await leases.acquire("server", "A", ttl_ms=60_000)
    b = await leases.acquire("server", "B", ttl_ms=60_000, dead="A")
    assert b is not None and b.epoch == a.epoch + 1
    await leases.release(b)
    assert await leases.current("server") is None
    c = await leases.acquire("server", "C", ttl_ms=60_000)
    assert c is not None and c.epoch == b.epoch + 1  # epochs only grow, released or not


async def test_two_claimants_at_once_get_one_lease(leases):
    """Ten simultaneous acquisitions of a free lease: exactly one succeeds."""
    results = await asyncio.gather(*(leases.acquire("channel:y", f"P{n}", ttl_ms=5000) for n in range(10)))
    assert sum(r is not None for r in results) == 1


async def test_a_channel_owner_writes_only_while_its_lease_holds(database_url):
    """Store writes carrying a lease pass while it is held and are refused, changing nothing, once it lapsed."""
    from broadcaster.core.ids import new_id
    from broadcaster.core.model import Request

    store = Store(database_url)
    await store.create_schema()
    try:
        channel_id = (await store.create_channel("fenced", "0" * 64, 0)).id
        lease = await store.leases.acquire("channel:fenced", "A", ttl_ms=300)
        first = Request(new_id(), "fenced", "Kept.", ["Kept."], 1)
        await store.insert_request(first, channel_id, lease)
        await asyncio.sleep(0.4)
        late = Request(new_id(), "fenced", "Refused.", ["Refused."], 2)
        with pytest.raises(LeaseLost):
            await store.insert_request(late, channel_id, lease)
        first.text = "changed"
        with pytest.raises(LeaseLost):
            await store.save([first], lease)
        assert await store.request(first.request_id) is not None
        assert await store.request(late.request_id) is None
    finally:
        await store.close()


async def test_an_owner_whose_lease_was_taken_queues_nothing_the_new_owner_never_loaded(server):
    """A producer's narration reaching a process that lost the channel (its lease lapsed, another took it)
    is refused (503) and leaves no row: it was queued, unseen by the new owner, and surfaced at the next
    handover, hours later."""
    from broadcaster.runtime.runner import OwnerChanged

    station = server.station
    leases = Leases(station.store.engine)
    held = await leases.acquire("channel:table", "A", 60_000)
    await station.adopt("table", held)
    channel_id = station.runners["table"].channel_id
    await leases.release(held)
    await leases.acquire("channel:table", "B", 60_000)
    with pytest.raises(OwnerChanged):
        await station.submit("table", "Written by the old owner.")
    line, _ = await station.store.load_line(channel_id, "table")
    assert line == []


@pytest.mark.server_config({"tts": {"tone_delay_ms": 300}})
async def test_an_owner_that_loses_its_lease_mid_narration_stops_making_it_without_a_crash(server, caplog):
    """The next sentence's write is refused: the old owner stops generating (the new one goes on from the
    database), with a warning, not a crash logged and retried every second until the station lets go."""
    station = server.station
    leases = Leases(station.store.engine)
    held = await leases.acquire("channel:table", "A", 60_000)
    await station.adopt("table", held)
    runner = station.runners["table"]
    await station.submit("table", "The first. The second. The third. The fourth.")
    await asyncio.sleep(0.4)  # the second sentence is being made
    await leases.release(held)
    await leases.acquire("channel:table", "B", 60_000)
    for _ in range(50):
        if runner.lost:
            break
        await asyncio.sleep(0.1)
    assert runner.lost
    await asyncio.sleep(1.2)  # a crashed job would have been logged and retried by now
    assert runner._job is None and all(t.done() for t in runner._tasks if t.get_name().startswith("generate"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
