"""The in-process event bus as the embedded announce path uses it: synchronous, no copies, no awaits.
(Its ordering, epochs, resume and resets are tested with the Redis bus in tests/integration/test_event_bus.py.)"""

import pytest

from broadcaster.runtime.bus import NOWHERE, Batch, InProcessBus, Mailbox, Position, Reset, ResetReason, StaleEpoch
from db.redis_bus import Backoff


def test_publish_now_delivers_before_it_returns():
    """A subscriber has the batch as soon as publish_now returns: nothing waits for the loop."""
    bus = InProcessBus()
    got = []
    bus.subscribe_now("table", got.append)
    message = {"type": "audio_chunk_ready", "seq": 0}
    position = bus.publish_now("table", 0, [message])
    assert isinstance(got[-1], Batch)
    assert got[-1].entries[0].message is message  # the same dict: serialized once, by the hub
    assert got[-1].position == position


def test_subscribe_now_catches_up_before_it_returns():
    """The first deliveries of a subscription are made inside subscribe_now, ahead of any later publish."""
    bus = InProcessBus()
    bus.publish_now("table", 0, [{"n": 1}], snapshot={"log": [1]})
    bus.publish_now("table", 0, [{"n": 2}])
    got = []
    subscription = bus.subscribe_now("table", got.append)
    reset, batch = got
    assert (reset.reason, reset.snapshot.state, [e.seq for e in batch.entries]) == (
        ResetReason.FRESH,
        {"log": [1]},
        [2],
    )
    assert subscription.position == batch.position


def test_a_subscriber_before_any_message_starts_at_seq_zero():
    """Subscribing to a channel with no messages yet gives an empty start, then the messages from seq 1."""
    bus = InProcessBus()
    got = []
    bus.subscribe_now("table", got.append)
    (reset,) = got
    assert (reset.snapshot, reset.position.seq) == (None, 0)
    bus.publish_now("table", 0, [{"n": 1}])
    assert [entry.seq for entry in got[-1].entries] == [1]


def test_an_equal_epoch_is_accepted_and_a_lower_one_refused():
    """The owner keeps publishing with its own epoch; only a lower one is stale."""
    bus = InProcessBus()
    bus.publish_now("table", 3, [{"n": 1}])
    bus.publish_now("table", 3, [{"n": 2}])
    with pytest.raises(StaleEpoch, match="has seen epoch 3; a publish with epoch 2 is stale"):
        bus.publish_now("table", 2, [{"n": 3}])
    assert bus.publish_now("table", 4, []).seq == 2


@pytest.mark.parametrize("epoch", [-1, 1.5, "1", True])
def test_an_epoch_must_be_a_whole_number(epoch):
    """An epoch that is not an integer >= 0 is our bug, refused with the value in the message."""
    with pytest.raises(ValueError, match="expected an epoch that is an integer >= 0"):
        InProcessBus().publish_now("table", epoch, [])


def test_history_keeps_only_the_last_messages():
    """A position just inside the history resumes; one just outside it is reset."""
    bus = InProcessBus(history=3)
    for n in range(1, 7):
        position = bus.publish_now("table", 0, [{"n": n}])
    got = []
    bus.subscribe_now("table", got.append, since=Position(position.generation, 3))
    assert [entry.seq for entry in got[0].entries] == [4, 5, 6]
    got.clear()
    bus.subscribe_now("table", got.append, since=Position(position.generation, 2))
    assert got == [Reset("table", position, ResetReason.BEHIND, None)]


def test_a_mailbox_needs_room_for_a_reset_and_its_batch():
    """A mailbox of one could never hold a reset with the batch that follows it."""
    with pytest.raises(ValueError, match="at least 2 deliveries"):
        Mailbox(InProcessBus(), "table", size=1)


def test_nowhere_is_the_start_of_every_history():
    """NOWHERE resumes a history with no snapshot from its first message."""
    bus = InProcessBus()
    bus.publish_now("table", 0, [{"n": 1}, {"n": 2}])
    got = []
    bus.subscribe_now("table", got.append, since=NOWHERE)
    assert [entry.seq for entry in got[0].entries] == [1, 2]


def test_backoff_doubles_up_to_its_cap_and_starts_over():
    """Reconnect waits double from the first up to the cap, and a reset starts them over."""
    backoff = Backoff(first_s=0.1, cap_s=0.5, rng=lambda: 0.5)  # 0.5: no spread
    assert [round(backoff.next(), 3) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)
