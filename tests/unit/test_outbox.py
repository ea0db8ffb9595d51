"""An owner's announcements wait out a bus outage in order, and stop for good once found stale."""

import asyncio

from broadcaster.runtime.bus import BusUnavailable, InProcessBus, Outbox


class Flaky:
    """The in-process bus, away for the first `failures` publishes; records every batch id tried."""

    def __init__(self, failures: int):
        self.bus = InProcessBus()
        self.failures = failures
        self.tried: list[str] = []

    async def publish(self, channel, epoch, messages, snapshot=None, batch_id=None):
        self.tried.append(batch_id)
        if self.failures:
            self.failures -= 1
            raise BusUnavailable("away")
        return await self.bus.publish(channel, epoch, messages, snapshot)


async def test_announcements_made_while_the_bus_is_away_go_out_in_order_once_it_is_back():
    flaky = Flaky(failures=3)
    got = []
    flaky.bus.subscribe_now("table", lambda delivery: got.extend(getattr(delivery, "entries", ())))
    outbox = Outbox(flaky, on_stale=lambda channel: None)
    for n in range(3):
        outbox.put("table", 1, [{"n": n}])
    async with asyncio.timeout(5):
        await outbox.flushed("table")
    assert [entry.message["n"] for entry in got] == [0, 1, 2]
    assert len(set(flaky.tried[:4])) == 1, "a retried publish must keep its batch id"


async def test_a_stale_owner_drops_what_waits_and_is_told_once():
    bus = InProcessBus()
    bus.publish_now("table", 5, [{"n": "new owner"}])
    got = []
    bus.subscribe_now("table", lambda delivery: got.extend(getattr(delivery, "entries", ())))
    stale: list[str] = []
    outbox = Outbox(bus, on_stale=stale.append)
    outbox.put("table", 4, [{"n": 1}])
    outbox.put("table", 4, [{"n": 2}])
    async with asyncio.timeout(5):
        await outbox.flushed("table")
    assert stale == ["table"] and outbox.waiting("table") == 0
    assert got == [], "a stale owner's announcement reached a listener"


async def test_a_channel_taken_back_after_it_was_forgotten_announces_its_own_steps_not_the_old_ones():
    """The bus is away during a handover, so what waited is forgotten; the channel then comes back to this
    process: its takeover goes out once the bus returns, and the old owner's batch does not (the old drain
    kept running on the forgotten queue, and the new announcement waited behind it for ever)."""
    flaky = Flaky(failures=10**9)
    outbox = Outbox(flaky, on_stale=lambda channel: None)
    outbox.put("table", 1, [{"n": "the old lease's last step"}])
    await asyncio.sleep(0.1)
    outbox.forget("table")
    outbox.put("table", 3, [{"n": "takeover"}])
    got = []
    flaky.bus.subscribe_now("table", lambda delivery: got.extend(getattr(delivery, "entries", ())))
    flaky.failures = 0
    async with asyncio.timeout(5):
        await outbox.flushed("table")
    assert [entry.message["n"] for entry in got] == ["takeover"] and outbox.waiting("table") == 0
    await outbox.close()
