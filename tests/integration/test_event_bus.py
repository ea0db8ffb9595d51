"""The event bus, the same behaviour from the in-process bus and from Redis Streams on a real redis-server,
then what only Redis can do to it: restart (empty or with its data), drop a reader, lose keys."""

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from broadcaster.runtime.bus import (
    NOWHERE,
    Batch,
    BusUnavailable,
    Delivery,
    EventBus,
    HistoryGap,
    InProcessBus,
    Mailbox,
    Position,
    Reset,
    ResetReason,
    StaleEpoch,
)
from db.redis_bus import Backoff, RedisBus

CHANNEL = "table"
WAIT_S = 5


class Follower:
    """A subscriber that checks, as it goes, that every batch follows what it had, and rebuilds the
    channel's messages: from a reset's snapshot (its "log" field, by the tests' convention) on."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.position = NOWHERE
        self.log: list | None = []  # the messages, in order; None after a reset without a snapshot
        self.errors: list[str] = []  # the bus swallows a handler's exceptions: kept here, raised by until()
        self._arrived = asyncio.Event()

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if isinstance(delivery, Reset):
            snapshot = delivery.snapshot
            if snapshot is not None:
                self.log = list(snapshot.state["log"])
            else:  # nothing to start from, unless the channel has had no messages yet
                self.log = [] if delivery.position.seq == 0 else None
        else:
            first = delivery.entries[0].seq
            after = Position(delivery.generation, first - 1)
            if self.position == NOWHERE:  # a history's first message follows "nothing yet"
                after = NOWHERE if first == 1 else after
            if after != self.position:
                self.errors.append(f"expected a batch after {self.position}, got one after {after}")
            seqs = [entry.seq for entry in delivery.entries]
            if seqs != list(range(first, first + len(seqs))):
                self.errors.append(f"expected consecutive seqs, got {seqs}")
            if self.log is not None:
                self.log.extend(entry.message for entry in delivery.entries)
        self.position = delivery.position
        self._arrived.set()

    def resets(self) -> list[Reset]:
        return [delivery for delivery in self.deliveries if isinstance(delivery, Reset)]

    async def until(self, done: Callable[["Follower"], bool], timeout: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout):
            while not done(self):
                assert not self.errors, self.errors
                self._arrived.clear()
                await self._arrived.wait()
        assert not self.errors, self.errors

    async def at(self, seq: int) -> None:
        await self.until(lambda me: me.position.seq >= seq)


def messages(*numbers: int) -> list[dict]:
    return [{"type": "note", "n": n} for n in numbers]


class Owner:
    """Publishes numbered messages, with a snapshot holding every message so far."""

    def __init__(self, bus: EventBus, epoch: int = 1, snapshots: bool = True):
        self.bus = bus
        self.epoch = epoch
        self.snapshots = snapshots
        self.log: list[dict] = []

    async def say(self, *numbers: int) -> Position:
        batch = messages(*numbers)
        snapshot = {"log": [*self.log, *batch]} if self.snapshots else None
        position = await self.bus.publish(CHANNEL, self.epoch, batch, snapshot)
        self.log.extend(batch)
        return position


@pytest.fixture(params=["memory", "redis"])
async def make_buses(request: pytest.FixtureRequest):
    """Buses for `n` processes: the in-process bus is one process, so all of them are the same one."""
    made: list[EventBus] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    async def make(n: int = 1, history: int = 1000) -> list[EventBus]:
        if url is None:
            bus = InProcessBus(history)
            made.append(bus)
            return [bus] * n
        buses = [RedisBus(url, history=history, backoff=Backoff(0.02, 0.2)) for _ in range(n)]
        for bus in buses:
            await bus.start()
        made.extend(buses)
        return buses

    yield make
    for bus in made:
        await bus.close()


async def one_bus(make_buses, history: int = 1000) -> EventBus:
    (bus,) = await make_buses(1, history)
    return bus


async def test_messages_are_numbered_consecutively_across_batches(make_buses):
    """Each message of each batch gets the next sequence number, and subscribers get them in order."""
    bus = await one_bus(make_buses)
    follower = Follower()
    await bus.subscribe(CHANNEL, follower)
    owner = Owner(bus, snapshots=False)
    assert (await owner.say(1, 2, 3)).seq == 3
    assert (await owner.say(4, 5)).seq == 5
    await follower.at(5)
    assert follower.log == messages(1, 2, 3, 4, 5)
    entries = [entry for delivery in follower.deliveries if isinstance(delivery, Batch) for entry in delivery.entries]
    assert [(entry.seq, entry.epoch) for entry in entries] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]


async def test_a_stale_epoch_is_refused_and_appends_nothing(make_buses):
    """A publisher whose epoch is lower than one the channel has seen gets StaleEpoch; the newer one goes on."""
    old_bus, new_bus = await make_buses(2)
    follower = Follower()
    await new_bus.subscribe(CHANNEL, follower)
    old, new = Owner(old_bus, epoch=1), Owner(new_bus, epoch=2)
    await old.say(1)
    await new.say(2)
    with pytest.raises(StaleEpoch) as refused:
        await old.say(3)
    assert (refused.value.epoch, refused.value.highest) == (1, 2)
    assert (await new.say(4)).seq == 3
    await follower.at(3)
    assert [m["n"] for m in follower.log] == [1, 2, 4]
    assert (await new_bus.snapshot(CHANNEL)).epoch == 2


async def test_a_subscriber_resumes_from_its_position_without_a_reset(make_buses):
    """Subscribing from a position inside the history replays the messages after it, then goes on live."""
    bus = await one_bus(make_buses)
    owner = Owner(bus)
    for n in range(1, 6):
        at = await owner.say(n)
    follower = Follower()
    follower.position = Position(at.generation, 2)
    follower.log = messages(1, 2)
    await bus.subscribe(CHANNEL, follower, since=follower.position)
    assert follower.resets() == []
    assert follower.position == at
    await owner.say(6)
    await follower.at(6)
    assert follower.log == messages(1, 2, 3, 4, 5, 6)
    assert [entry.seq for entry in await bus.replay(CHANNEL, Position(at.generation, 3))] == [4, 5, 6]


async def test_a_subscriber_too_far_behind_is_reset_to_the_snapshot(make_buses):
    """A position older than the history gets a reset with the latest snapshot instead of a gap."""
    bus = await one_bus(make_buses, history=8)
    owner = Owner(bus)
    early = await owner.say(0)
    for n in range(1, 300, 10):
        await owner.say(*range(n, n + 10))
    follower = Follower()
    await bus.subscribe(CHANNEL, follower, since=early)
    (reset,) = follower.resets()
    assert reset.reason == ResetReason.BEHIND
    assert reset.snapshot.seq == 301
    assert follower.log == owner.log
    with pytest.raises(HistoryGap) as gap:
        await bus.replay(CHANNEL, early)
    assert gap.value.reason == ResetReason.BEHIND


async def test_a_snapshot_behind_the_head_comes_with_the_messages_after_it(make_buses):
    """A new subscriber gets the stored snapshot, then the messages published after it, then live ones."""
    bus = await one_bus(make_buses)
    owner = Owner(bus)
    await owner.say(1, 2, 3)
    owner.snapshots = False
    await owner.say(4)
    await owner.say(5)
    follower = Follower()
    await bus.subscribe(CHANNEL, follower)
    reset, batch = follower.deliveries
    assert (reset.reason, reset.snapshot.seq) == (ResetReason.FRESH, 3)
    assert [entry.seq for entry in batch.entries] == [4, 5]
    await owner.say(6)
    await follower.at(6)
    assert follower.log == messages(1, 2, 3, 4, 5, 6)


async def test_a_position_from_another_history_is_reset(make_buses):
    """A position whose generation the bus does not hold means the history was lost: a reset."""
    bus = await one_bus(make_buses)
    owner = Owner(bus)
    await owner.say(1, 2)
    follower = Follower()
    await bus.subscribe(CHANNEL, follower, since=Position("123", 1))
    (reset,) = follower.resets()
    assert reset.reason == ResetReason.LOST
    assert follower.log == owner.log


async def test_every_process_sees_the_same_numbered_stream(make_buses):
    """Subscribers on several processes get the same messages with the same numbers."""
    owner_bus, other_bus = await make_buses(2)
    here, there = Follower(), Follower()
    await owner_bus.subscribe(CHANNEL, here)
    await other_bus.subscribe(CHANNEL, there)
    owner = Owner(owner_bus, snapshots=False)
    for n in range(1, 21):
        await owner.say(n)
    await here.at(20)
    await there.at(20)
    assert here.log == there.log == owner.log
    assert here.position == there.position


async def test_channels_are_separate_streams(make_buses):
    """Each channel numbers its own messages, and a subscriber gets only its channel's."""
    bus = await one_bus(make_buses)
    followers = {f"room-{i}": Follower() for i in range(12)}
    for channel, follower in followers.items():
        await bus.subscribe(channel, follower)
    for round_ in range(3):
        for i, channel in enumerate(followers):
            assert (await bus.publish(channel, 0, [{"room": i, "round": round_}])).seq == round_ + 1
    for i, follower in enumerate(followers.values()):
        await follower.at(3)
        assert follower.log == [{"room": i, "round": r} for r in range(3)]


async def test_a_slow_subscriber_does_not_hold_up_the_others(make_buses):
    """A mailbox nobody reads overflows and is cut off while others get everything; read later, it catches up."""
    bus = await one_bus(make_buses)
    fast = Follower()
    await bus.subscribe(CHANNEL, fast)
    slow = Mailbox(bus, CHANNEL, size=4)
    first = await slow.get()  # subscribed; then it stops reading
    owner = Owner(bus)
    for n in range(1, 41):
        await owner.say(n)
    await fast.at(40)
    assert slow.overflows >= 1
    late = Follower()
    late(first)
    while late.position.seq < 40:
        late(await slow.get())
    assert late.log == fast.log == owner.log
    slow.close()


async def test_a_failing_subscriber_does_not_stop_the_others(make_buses, caplog):
    """A handler that raises is logged and skipped; the next subscriber still gets the batch."""
    bus = await one_bus(make_buses)

    def broken(delivery: Delivery) -> None:
        raise RuntimeError("broken subscriber")

    await bus.subscribe(CHANNEL, broken)
    follower = Follower()
    await bus.subscribe(CHANNEL, follower)
    await Owner(bus).say(1)
    await follower.at(1)
    assert "failed on a delivery" in caplog.text


async def test_a_closed_subscription_gets_nothing_more(make_buses):
    """After close() the handler is not called again."""
    bus = await one_bus(make_buses)
    follower, witness = Follower(), Follower()
    subscription = await bus.subscribe(CHANNEL, follower)
    await bus.subscribe(CHANNEL, witness)
    owner = Owner(bus)
    await owner.say(1)
    await follower.at(1)
    subscription.close()
    await owner.say(2)
    await witness.at(2)
    assert follower.position.seq == 1


# -- Redis only ---------------------------------------------------------------------------


@pytest.fixture
async def redis_bus(own_redis):
    bus = RedisBus(own_redis.url, backoff=Backoff(0.02, 0.2), check_s=1)
    await bus.start()
    yield bus
    await bus.close()


async def test_redis_restarting_empty_makes_subscribers_start_over(own_redis, redis_bus):
    """A subscriber reading through a Redis restart that lost everything reconnects by itself, is told
    the history is gone, and is reset to the snapshot that the owner's next publish stores."""
    follower = Follower()
    await redis_bus.subscribe(CHANNEL, follower)
    owner = Owner(redis_bus)
    old = await owner.say(1, 2, 3)
    await follower.at(3)
    await asyncio.to_thread(own_redis.restart, keep_data=False)
    await follower.until(lambda me: me.position == NOWHERE)
    assert follower.deliveries[-1] == Reset(CHANNEL, NOWHERE, ResetReason.LOST, None)
    new = await owner.say(4)
    assert new.generation != old.generation
    assert new.seq == 1
    await follower.until(lambda me: me.position == new)
    assert follower.log == owner.log
    assert redis_bus.reconnects >= 1


async def test_redis_restarting_with_its_data_replays_without_a_reset(own_redis, redis_bus):
    """When Redis comes back with its data, the subscriber continues from where it was, with no reset."""
    follower = Follower()
    await redis_bus.subscribe(CHANNEL, follower)
    owner = Owner(redis_bus, snapshots=False)
    await owner.say(1, 2, 3)
    await follower.at(3)
    await asyncio.to_thread(own_redis.restart, keep_data=True)
    await owner.say(4)
    await owner.say(5, 6)
    await follower.at(6)
    assert [reset.reason for reset in follower.resets()] == [ResetReason.FRESH]  # the first subscribe's only
    assert follower.log == owner.log
    assert redis_bus.reconnects >= 1


async def test_a_reader_cut_off_replays_what_it_missed(own_redis, redis_bus):
    """Messages published while the reading connection was down come from the history after it reconnects."""
    follower = Follower()
    await redis_bus.subscribe(CHANNEL, follower)
    owner = Owner(redis_bus, snapshots=False)
    await owner.say(1)
    await follower.at(1)
    async with aioredis.Redis.from_url(own_redis.url) as admin:
        await admin.client_kill_filter(_id=redis_bus._reader_id)
        for n in range(2, 12):
            await owner.say(n)
    await follower.at(11)
    assert len(follower.resets()) == 1
    assert follower.log == owner.log


async def test_publishing_while_redis_is_down_raises_and_recovers(own_redis, redis_bus):
    """A publish with Redis down raises BusUnavailable; once it is back, publishing works again."""
    owner = Owner(redis_bus)
    await owner.say(1)
    await asyncio.to_thread(own_redis.stop, keep_data=True)
    with pytest.raises(BusUnavailable):
        await redis_bus.publish(CHANNEL, 1, messages(2))
    await asyncio.to_thread(own_redis.start)
    assert (await owner.say(2)).seq == 2


async def test_keys_lost_while_connected_start_a_new_history(own_redis, redis_bus):
    """Keys deleted under a connected reader: the next publish starts a new generation, and subscribers reset."""
    follower = Follower()
    await redis_bus.subscribe(CHANNEL, follower)
    owner = Owner(redis_bus)
    old = await owner.say(1, 2)
    await follower.at(2)
    async with aioredis.Redis.from_url(own_redis.url) as admin:
        await admin.flushall()
    new = await owner.say(3)
    assert (int(new.generation) > int(old.generation), new.seq) == (True, 1)
    await follower.until(lambda me: me.position == new)
    assert follower.resets()[-1].reason == ResetReason.LOST
    assert follower.log == owner.log


async def test_a_retried_publish_is_appended_once(redis_bus):
    """The same publish sent twice (a retry after a lost reply) lands once."""
    args = [1, 1000, "batch-1", "", '{"n": 1}', '{"n": 2}']
    first = await redis_bus._publish(keys=redis_bus.keys(CHANNEL), args=args)
    again = await redis_bus._publish(keys=redis_bus.keys(CHANNEL), args=args)
    assert first == again
    assert [entry.seq for entry in await redis_bus.replay(CHANNEL, NOWHERE)] == [1, 2]


async def test_concurrent_publishes_get_distinct_consecutive_numbers(redis_bus):
    """Publishes racing from many tasks never share or skip a sequence number."""
    positions = await asyncio.gather(*(redis_bus.publish(CHANNEL, 1, messages(n, n)) for n in range(30)))
    assert sorted(position.seq for position in positions) == list(range(2, 61, 2))
    entries = await redis_bus.replay(CHANNEL, NOWHERE)
    assert [entry.seq for entry in entries] == list(range(1, 61))


async def test_keys_lost_with_nothing_published_are_noticed_by_the_periodic_check(own_redis):
    """With no new message to show it, a lost history is still noticed within a check and reported."""
    bus = RedisBus(own_redis.url, block_ms=200, check_s=0.3)
    await bus.start()
    try:
        follower = Follower()
        await bus.subscribe(CHANNEL, follower)
        await Owner(bus).say(1)
        await follower.at(1)
        async with aioredis.Redis.from_url(own_redis.url) as admin:
            await admin.flushall()
        await follower.until(lambda me: me.position == NOWHERE)
        assert follower.deliveries[-1].reason == ResetReason.LOST
    finally:
        await bus.close()


async def test_subscribing_while_redis_is_down_raises_bus_unavailable(own_redis):
    """A subscription that cannot make its first delivery in time is given up with BusUnavailable."""
    bus = RedisBus(own_redis.url, ready_timeout_s=0.3, backoff=Backoff(0.02, 0.1))
    await bus.start()
    try:
        await asyncio.to_thread(own_redis.stop)
        with pytest.raises(BusUnavailable, match="could not subscribe to channel 'table' within 0.3 s"):
            await bus.subscribe(CHANNEL, Follower())
        await asyncio.to_thread(own_redis.start)
        follower = Follower()
        await bus.subscribe(CHANNEL, follower)
        assert follower.resets()[0].reason == ResetReason.FRESH
    finally:
        await bus.close()
