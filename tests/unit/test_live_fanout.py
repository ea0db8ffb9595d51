"""The live stream's fan-out: one framed block for every player, written straight to its transport,
and a player too far behind dropped without delaying the others. No encoder, socket or clock."""

from types import SimpleNamespace

from broadcaster.config import LiveConfig
from broadcaster.runtime.live import TRANSPORT_BYTES, LiveStream


class FakeTransport:
    """Records what is written; `reading=False` keeps it all buffered, as a player that stopped reading."""

    def __init__(self, reading: bool = True):
        self.reading = reading
        self.written: list[bytes] = []
        self.buffered = 0
        self.closing = self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)
        if not self.reading:
            self.buffered += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default=None):
        return default  # no socket behind it

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = self.closing = True


def stream() -> LiveStream:
    runner = SimpleNamespace(name="office", channel=SimpleNamespace(recent=[], line=[]))
    return LiveStream(runner, audio=None, config=LiveConfig(), clock=lambda: 0)


async def test_every_player_gets_the_same_block_object():
    """A block is framed once each way: all players with metadata are handed one bytes object, all without another."""
    live = stream()
    transports = [FakeTransport() for _ in range(4)]
    for i, transport in enumerate(transports):
        live.subscribe(transport, icy=i % 2 == 1)
    live.broadcast(b"\xff" * 20_000)  # crosses a metadata position
    plain, framed = ([t.written[-1] for t in transports[i::2]] for i in (0, 1))
    assert plain[0] is plain[1] and framed[0] is framed[1]
    assert plain[0] == b"\xff" * 20_000 and len(framed[0]) > 20_000


async def test_a_stalled_player_is_dropped_and_the_reading_one_keeps_every_block():
    """A player that stops reading has its blocks held, uncopied, once its transport is full, and is cut off
    (what it held thrown away) once more than the bound waits; the player beside it gets every block."""
    live = stream()
    reading, stalled = FakeTransport(), FakeTransport(reading=False)
    kept = live.subscribe(reading, icy=True)
    gone = live.subscribe(stalled, icy=True)
    block, sent = b"\xff" * live.block_bytes, 0
    while live.listeners != {kept}:
        live.broadcast(block)
        sent += 1
        assert not gone.backlog or gone.backlog[-1] is reading.written[-1]  # held, not copied
    assert stalled.aborted and gone.ended.done() and live.dropped == 1 and not gone.backlog
    assert stalled.buffered <= TRANSPORT_BYTES + len(block) + 100  # the transport's own copy stayed small
    assert sent * len(block) > live.behind_bytes  # it was about BEHIND_S behind when dropped
    written = len(stalled.written)
    for _ in range(5):
        live.broadcast(block)
        sent += 1
    assert len(reading.written) == sent and len(stalled.written) == written


async def test_a_player_that_catches_up_gets_what_waited_in_order():
    """Blocks held while a player's transport was full reach it in order, none lost, once it drains."""
    live = stream()
    transport = FakeTransport(reading=False)
    listener = live.subscribe(transport, icy=False)
    blocks = [bytes([i]) * live.block_bytes for i in range(20)]
    for block in blocks[:15]:
        live.broadcast(block)
    assert listener.backlog  # it fell behind
    transport.reading, transport.buffered = True, 0
    for block in blocks[15:]:
        live.broadcast(block)
    assert not listener.backlog and transport.written == blocks


async def test_a_player_that_left_is_ended_at_the_next_block():
    """A transport closing (the player hung up) ends that player's stream, without writing to it."""
    live = stream()
    transport = FakeTransport()
    listener = live.subscribe(transport, icy=False)
    transport.closing = True
    live.broadcast(b"\xff" * 100)
    assert listener.ended.done() and not live.listeners and transport.written == []


async def test_a_new_player_starts_with_the_burst_then_the_next_block():
    """subscribe writes the recent audio first, so the next block follows it with nothing missing between."""
    live = stream()
    live.broadcast(b"a" * 30_000)
    transport = FakeTransport()
    live.subscribe(transport, icy=False)
    live.broadcast(b"b" * 100)
    assert transport.written == [b"a" * 30_000, b"b" * 100]


async def test_ending_a_player_stops_its_audio():
    """end() (its listen key was replaced) takes a player off the stream at once."""
    live = stream()
    transport = FakeTransport()
    listener = live.subscribe(transport, icy=True)
    live.end(listener)
    live.broadcast(b"\xff" * 100)
    assert listener.ended.done() and transport.written == []


async def test_a_player_joining_a_stream_that_ended_is_ended_at_once():
    """Once the encoder's output has ended, a new player is not left waiting for audio that never comes."""
    live = stream()
    live.broadcast(b"\xff" * 100)
    live._end_all()  # what the read loop does when the encoder's output ends
    transport = FakeTransport()
    listener = live.subscribe(transport, icy=False)
    assert listener.ended.done() and not live.listeners and transport.written == []
