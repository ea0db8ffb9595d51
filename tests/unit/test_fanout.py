"""The hub hands each broadcast to every listener's bounded queue, serialized once; a listener whose queue
cannot take it is dropped with 4008 while the others get everything, in order.

The WebSocket is a stand-in that records what is sent to it and how it was closed;
a stalled one never finishes a send, like a socket whose reader stopped reading."""

import asyncio
import json

import pytest

from broadcaster.runtime.telemetry import Telemetry
from web import fanout
from web.fanout import TOO_SLOW, Hub, Listener


class StandInSocket:
    def __init__(self, stalled: bool = False) -> None:
        self.stalled = stalled
        self.closed = False
        self.close_code: int | None = None
        self.sent: list[str] = []
        self.release = asyncio.Event()

    async def send_frame(self, data: bytes, opcode) -> None:
        if self.stalled:
            await self.release.wait()
        self.sent.append(data.decode())

    async def send_str(self, text: str) -> None:
        await self.send_frame(text.encode(), None)

    async def close(self, code: int, message: bytes) -> None:
        self.closed, self.close_code = True, code


class BrokenSocket(StandInSocket):
    """A connection the peer has gone from: every send fails."""

    async def send_frame(self, data: bytes, opcode) -> None:
        raise ConnectionResetError("peer went away")


@pytest.fixture
async def hub():
    hub = Hub(Telemetry())
    yield hub
    await hub.close_all()


def join(hub: Hub, name: str, queue_size: int = 8, stalled: bool = False, batched: bool = False) -> Listener:
    listener = Listener(StandInSocket(stalled), name, "table", queue_size, batched=batched)
    hub.add(listener)
    return listener


async def settle() -> None:
    """Let every writer task send what it can."""
    for _ in range(5):
        await asyncio.sleep(0)


def sent(listener: Listener) -> list[dict]:
    return [json.loads(text) for text in listener.ws.sent]


async def test_each_message_is_serialized_once_and_every_listener_gets_it_in_order(hub, monkeypatch):
    """Two steps to three listeners: one json.dumps per message, and each listener receives all of them in order."""
    listeners = [join(hub, f"c{n}") for n in range(3)]
    dumped = []
    monkeypatch.setattr(
        fanout.json, "dumps", lambda payload: dumped.append(payload) or json.JSONEncoder().encode(payload)
    )
    hub.broadcast("table", {"n": 1}, {"n": 2})
    hub.broadcast("table", {"n": 3})
    monkeypatch.undo()
    assert dumped == [{"n": 1}, {"n": 2}, {"n": 3}]
    await settle()
    assert all(sent(listener) == [{"n": 1}, {"n": 2}, {"n": 3}] for listener in listeners)


async def test_a_listener_that_asked_for_batches_gets_a_step_of_several_messages_as_one(hub, monkeypatch):
    """The same steps to a listener with batches and one without: a step of two is one batch message
    (made from the two encodings, no more serializing), a step of one goes as it is, and unwrapped
    they are the same messages in the same order."""
    plain, batched = join(hub, "plain"), join(hub, "batched", batched=True)
    dumped = []
    monkeypatch.setattr(
        fanout.json, "dumps", lambda payload: dumped.append(payload) or json.JSONEncoder().encode(payload)
    )
    hub.broadcast("table", {"n": 1, "text": 'a "quoted", [bracketed] text'}, {"n": 2})
    hub.broadcast("table", {"n": 3})
    monkeypatch.undo()
    assert len(dumped) == 3
    await settle()
    assert sent(batched) == [
        {"type": "batch", "messages": [{"n": 1, "text": 'a "quoted", [bracketed] text'}, {"n": 2}]},
        {"n": 3},
    ]
    unwrapped = [each for message in sent(batched) for each in message.get("messages", [message])]
    assert unwrapped == sent(plain) and len(sent(plain)) == 3


async def test_a_listener_too_slow_for_its_queue_is_dropped_with_4008_and_the_others_get_everything(hub):
    """A stalled listener's queue fills; the step that does not fit drops it (4008, counted), and the
    reading listeners get every step, the one that dropped it included."""
    fast = [join(hub, f"fast{n}", queue_size=4) for n in range(2)]
    slow = join(hub, "slow", queue_size=4, stalled=True)
    for step in range(3):
        hub.broadcast("table", {"step": step, "part": 1}, {"step": step, "part": 2})
        assert hub.dropped_total == (1 if step == 2 else 0), "one message being sent and three queued: no room for two"
        await settle()
    assert slow.dropped and hub.count("table") == 2
    assert slow.ws.close_code == TOO_SLOW
    assert len(slow.pending) == 3, "the step that did not fit was not half queued"
    assert hub.metrics.registry.get_sample_value("broadcaster_slow_consumers_dropped_total", {"kind": "websocket"}) == 1
    expected = [{"step": step, "part": part} for step in range(3) for part in (1, 2)]
    assert all(sent(listener) == expected for listener in fast)
    hub.broadcast("table", {"step": 3})
    await settle()
    assert all(sent(listener)[-1] == {"step": 3} for listener in fast), "the dropped listener is out of the way"


async def test_a_listener_whose_connection_failed_takes_nothing_and_is_not_counted_too_slow(hub):
    """A send that fails (the peer went away) ends the writer; later broadcasts skip the listener until
    its handler removes it, and nobody calls it too slow."""
    gone = Listener(BrokenSocket(), "gone", "table", queue_size=1)
    hub.add(gone)
    assert gone.send({"n": 1})
    await settle()
    for n in range(5):
        hub.broadcast("table", {"n": n})
    assert gone.gone and hub.dropped_total == 0 and not gone.pending


async def test_a_reply_goes_out_at_once_when_nothing_waits_and_else_behind_what_is_queued(hub):
    """An answer to the client's own message is sent straight away when its queue is empty; when
    broadcasts are waiting, it follows them."""
    listener = join(hub, "c1", stalled=True)
    listener.ws.stalled = False
    assert await listener.reply({"reply": 1})
    assert sent(listener) == [{"reply": 1}]
    listener.ws.stalled = True
    hub.broadcast("table", {"n": 1})
    await settle()  # the writer task is in the middle of sending it
    assert await listener.reply({"reply": 2})
    assert sent(listener) == [{"reply": 1}] and listener.backlog == 2
    listener.ws.release.set()
    await settle()
    assert sent(listener) == [{"reply": 1}, {"n": 1}, {"reply": 2}]


async def test_counts_of_a_burst_of_joins_go_out_once(hub, monkeypatch):
    """A hundred listeners joining at once hear one listeners_changed, with the total."""
    monkeypatch.setattr(fanout, "COUNT_DELAY_S", 0.01)
    listeners = [join(hub, f"c{n}") for n in range(100)]
    await asyncio.sleep(0.05)
    await settle()
    assert all(sent(listener) == [{"type": "listeners_changed", "listeners": 100}] for listener in listeners)


async def test_a_send_runs_at_once_until_it_must_wait_and_a_task_finishes_it():
    """`started` runs a coroutine to its first suspension: one that never waits is done on return; one
    that waits is carried on by a task, which sees the awaited result; an error before waiting is raised."""
    done: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def quick():
        done.append("quick")

    async def waits():
        done.append(await gate)

    async def fails():
        raise ConnectionResetError("gone")

    assert fanout.started(quick()) is None and done == ["quick"]
    task = fanout.started(waits())
    assert task is not None and not task.done()
    gate.set_result("after the wait")
    await task
    assert done == ["quick", "after the wait"]
    with pytest.raises(ConnectionResetError):
        fanout.started(fails())
