"""A replica of a channel follows the owner's wire messages: the owner here is a real core Channel on a
stepped clock, its events turned into messages as the publisher turns them; nothing sleeps."""

import asyncio
from itertools import count

from broadcaster.core.bed import Bed, BedTrack, Segment
from broadcaster.core.channel import Channel
from broadcaster.core.events import QueueChanged
from broadcaster.core.model import Chunk, Request, Writing
from broadcaster.core.states import ChunkState, RequestState
from broadcaster.core.timeline import TimelineConfig
from broadcaster.runtime.bus import InProcessBus
from web.feed import Feeds
from web.messages import event_json, queue_state_json, takeover_json
from web.replica import RECENT_KEPT, ChannelReplica, Followed

CFG = TimelineConfig(lead_ms=500, sentence_gap_ms=250, request_gap_ms=600, generation_timeout_ms=10_000)
_ids = count()


class Owner:
    """The channel's owner: each step's events go to the replica as one batch of messages."""

    def __init__(self, replica: ChannelReplica | None = None, config: TimelineConfig = CFG):
        self.channel = Channel("table", config)
        self.replica = replica or ChannelReplica("table")
        self.now = 0
        self.sent: list[dict] = []

    def step(self, events: list) -> None:
        messages, queue_sent = [], False
        for event in events:
            if isinstance(event, QueueChanged):
                if queue_sent:
                    continue  # one queue update per step, as the publisher sends
                queue_sent = True
            if (message := event_json(event, self.channel)) is not None:
                messages.append(message)
        self.sent += messages
        self.replica.take(messages)

    def submit(self, *sentences: str, kind: str = "speech") -> Request:
        request = Request(f"{next(_ids):016x}", "table", " ".join(sentences), list(sentences), self.now, kind=kind)
        self.step(self.channel.submit(request, self.now))
        return request

    def make(self, request: Request, *durations_ms: int) -> None:
        """Its next chunks are ready now, one step each."""
        if request.state == RequestState.PENDING:
            self.step(self.channel.generation_started(request.request_id, self.now))
        for duration_ms in durations_ms:
            chunk = Chunk(
                f"{next(_ids):016x}",
                request.request_id,
                request.next_seq,
                request.sentences[request.next_seq],
                duration_ms,
                self.now,
            )
            self.step(self.channel.chunk_ready(chunk, self.now))

    def at(self, now_ms: int) -> None:
        self.now = now_ms
        self.step(self.channel.tick(now_ms))


def placed(requests) -> list[tuple]:
    """What a stream reads of requests: ids and states, and their placed chunks (discarded or not)."""
    return [
        (
            r.request_id,
            r.state,
            [
                (c.chunk_id, c.seq, c.starts_at_ms, c.duration_ms, c.state == ChunkState.DISCARDED)
                for c in r.chunks
                if c.scheduled
            ],
        )
        for r in requests
    ]


def assert_same(owner: Owner) -> None:
    assert placed(owner.replica.channel.line) == placed(owner.channel.line)
    assert placed(owner.replica.channel.recent) == placed(owner.channel.recent)


def test_a_replica_fed_every_message_holds_the_owners_line_and_timeline():
    """Two narrations queued, made and played out: after every step the replica has the owner's requests
    in line and recent, in order, with the same chunks at the same times."""
    owner = Owner()
    first = owner.submit("One.", "Two.")
    second = owner.submit("Three.")
    assert_same(owner)
    owner.make(first, 1000)
    assert_same(owner)
    owner.make(first, 800)
    owner.make(second, 700)
    assert_same(owner)
    for now in range(0, 6000, 100):
        owner.at(now)
        assert_same(owner)
    assert [r.state for r in owner.replica.channel.recent] == [RequestState.PLAYED, RequestState.PLAYED]
    assert owner.replica.channel.line == []
    assert owner.replica.find_request(second.request_id).finished_at_ms == second.finished_at_ms


def test_a_track_keeps_its_tags_and_a_request_its_chunk_count():
    """What the wire says of a request is filled in: text, kind, and one placeholder sentence per chunk to come."""
    owner = Owner()
    request = owner.submit("Part one.", "Part two.", "Part three.")
    owner.make(request, 1000)
    heard = owner.replica.find_request(request.request_id)
    assert (heard.text, heard.kind, len(heard.sentences)) == ("Part one. Part two. Part three.", "speech", 3)
    assert heard.chunks[0].text == "Part one." and not heard.generated
    replica = ChannelReplica("table")
    replica.take(
        [
            {"type": "audio_stream_started", "request_id": "t1", "starts_at_ms": 500, "text": "A - Song"}
            | {"chunks_total": 2, "kind": "track", "title": "Song", "artist": "A", "duration_ms": 9000, "auto": True}
        ]
    )
    track = replica.find_request("t1")
    assert (track.kind, track.title, track.artist, track.duration_ms, track.auto) == ("track", "Song", "A", 9000, True)


def test_a_late_chunk_is_where_the_owner_moved_it():
    """A chunk made after it was due goes on the air late; the replica has it at the owner's new start."""
    owner = Owner()
    request = owner.submit("One.", "Two.")
    owner.make(request, 1000)  # plays 500..1500; the next was due at 1750
    owner.at(2000)
    owner.make(request, 800)
    assert any(m["type"] == "timeline_shifted" for m in owner.sent)
    assert_same(owner)
    assert owner.replica.find_request(request.request_id).chunks[1].starts_at_ms == request.chunks[1].starts_at_ms


def test_a_timeline_shift_moves_the_chunk_it_names():
    """`timeline_shifted` sets the named chunk's start."""
    replica = ChannelReplica("table")
    replica.take(
        [{"type": "audio_stream_started", "request_id": "r", "text": "x", "chunks_total": 2, "kind": "speech"}]
    )
    chunk = {"request_id": "r", "chunk_id": "c", "seq": 0, "starts_at_ms": 500, "duration_ms": 900, "text": "x"}
    replica.take([{"type": "audio_chunk_ready", **chunk}])
    replica.take(
        [{"type": "timeline_shifted", "request_id": "r", "chunk_id": "c", "starts_at_ms": 800, "shift_ms": 300}]
    )
    assert replica.find_request("r").chunks[0].starts_at_ms == 800


def test_a_failed_request_keeps_the_chunk_sounding_and_discards_the_rest():
    """On `request_failed` the chunks in `discarded_chunk_ids` are discarded, the one sounding plays out,
    and the request moves to recent."""
    owner = Owner()
    request = owner.submit("One.", "Two.", "Three.")
    owner.make(request, 1000, 1000)  # 500..1500, 1750..2750
    owner.at(600)
    owner.step(owner.channel.generation_failed(request.request_id, "the voice broke", 600))
    assert_same(owner)
    heard = owner.replica.find_request(request.request_id)
    assert heard.state == RequestState.FAILED and heard.error == "the voice broke"
    assert [c.state for c in heard.chunks] == [ChunkState.PLAYED, ChunkState.DISCARDED]
    assert heard in owner.replica.channel.recent and heard not in owner.replica.channel.line


def test_a_skip_discards_what_was_not_heard_and_the_next_request_goes_on_the_air():
    """A request skipped on the air leaves the line with its unheard chunks discarded; the next one follows."""
    owner = Owner()
    first = owner.submit("One.", "Two.")
    second = owner.submit("Three.")
    owner.make(first, 1000, 1000)
    owner.make(second, 500)
    owner.at(700)
    owner.step(owner.channel.cancel(first.request_id, 700))
    assert_same(owner)
    assert owner.replica.find_request(first.request_id).state == RequestState.CANCELLED
    assert owner.replica.channel.line[0].request_id == second.request_id


def test_a_reset_starts_from_the_snapshot_and_keeps_the_chunks_it_knew():
    """A reset takes the head with its placed chunks, the queue and the recent requests from the snapshot;
    a request it knew keeps its chunks; later messages carry on from there as for a replica that saw all."""
    owner = Owner()
    played = owner.submit("Gone.")
    owner.make(played, 300)
    owner.at(2000)
    first = owner.submit("One.", "Two.")
    second = owner.submit("Three.")
    owner.make(first, 1000)
    owner.make(second, 400)
    owner.at(2200)

    fresh = ChannelReplica("table")
    fresh.reset(queue_state_json(owner.channel, owner.now))
    assert [r.request_id for r in fresh.channel.line] == [first.request_id, second.request_id]
    assert [r.request_id for r in fresh.channel.recent] == [played.request_id]
    assert placed(fresh.channel.line[:1]) == placed(owner.channel.line[:1])
    assert fresh.channel.recent[0].state == RequestState.PLAYED

    owner.replica.reset(queue_state_json(owner.channel, owner.now))  # one that knew it all already
    assert_same(owner)
    owner.replica = fresh
    owner.make(first, 600)
    for now in range(2200, 6000, 100):
        owner.at(now)
    assert placed(fresh.channel.line) == placed(owner.channel.line) == []
    assert placed(list(fresh.channel.recent)[1:]) == placed(list(owner.channel.recent)[1:])  # the first: no chunks


def test_a_takeover_message_starts_the_replica_again_from_the_state_it_carries():
    """What a new owner publishes first: taken like a reset, in its place among the messages."""
    owner = Owner()
    first = owner.submit("One.", "Two.")
    owner.make(first, 1000)
    owner.at(1500)
    fresh = ChannelReplica("table")
    fresh.take([takeover_json(queue_state_json(owner.channel, owner.now))])
    assert [r.request_id for r in fresh.channel.line] == [first.request_id]
    assert placed(fresh.channel.line) == placed(owner.channel.line)


def test_a_reset_keeps_the_chunks_of_the_next_request_already_in_its_lead():
    """With a lead longer than the gap between requests, the next request's first chunk is placed while
    the one before still sounds: the snapshot's queue item carries it, and a reset keeps it."""
    owner = Owner(config=TimelineConfig(lead_ms=900, sentence_gap_ms=250, request_gap_ms=300))
    first, second = owner.submit("One."), owner.submit("Two.")
    owner.make(first, 2000)
    owner.make(second, 500)
    owner.at(2400)  # the first ends at 2900; the second starts at 3200, placed a lead (900 ms) before
    assert owner.channel.now_playing() is first and placed([second])[0][2], "not in the window"
    fresh = ChannelReplica("table")
    fresh.reset(queue_state_json(owner.channel, owner.now))
    assert placed(fresh.channel.line) == placed(owner.channel.line)


def test_a_reset_without_a_snapshot_keeps_what_was_known():
    """With nothing to start from, the replica plays on with what it had."""
    owner = Owner()
    request = owner.submit("One.")
    owner.make(request, 1000)
    before = placed(owner.replica.channel.line)
    owner.replica.reset(None)
    assert placed(owner.replica.channel.line) == before


def test_the_recent_history_is_bounded():
    """However many requests played, the replica keeps the latest RECENT_KEPT finished ones."""
    owner = Owner()
    for _ in range(RECENT_KEPT + 8):
        request = owner.submit("Short.")
        owner.make(request, 100)
        owner.at(owner.now + 2000)
    assert len(owner.replica.channel.recent) == RECENT_KEPT
    assert owner.replica.channel.recent[-1].request_id == request.request_id
    assert owner.replica.channel.line == []


def test_messages_it_does_not_need_and_chunks_of_unknown_requests_are_passed_over():
    """Other message types change nothing, and a chunk of a request it never heard of has nowhere to go."""
    replica = ChannelReplica("table")
    chunk = {"request_id": "zz", "chunk_id": "c", "seq": 0, "starts_at_ms": 1, "duration_ms": 2, "text": "t"}
    replica.take([{"type": "listeners_changed", "listeners": 3}, {"type": "audio_chunk_ready", **chunk}])
    assert replica.channel.line == [] and list(replica.channel.recent) == []


async def test_wait_change_returns_once_messages_arrive_and_otherwise_at_the_timeout():
    """A stream waiting on the replica wakes on the next batch; with none it waits out its timeout."""
    replica = ChannelReplica("table")
    waiting = asyncio.create_task(replica.wait_change(5))
    for _ in range(3):  # nothing has arrived: it keeps waiting
        await asyncio.sleep(0)
    assert not waiting.done()
    replica.take([])
    await asyncio.wait_for(waiting, 1)
    quiet = asyncio.create_task(replica.wait_change(0.05))
    await asyncio.sleep(0)
    assert not quiet.done()
    await asyncio.wait_for(quiet, 1)  # returns by itself at its timeout, with nothing taken


async def test_the_feed_keeps_its_replica_from_the_snapshot_and_the_messages_after_it():
    """A feed subscribed after the channel began starts its replica from the stored snapshot (its first
    delivery is a reset) and moves it on with every batch."""
    bus, owner = InProcessBus(), Owner()
    request = owner.submit("One.", "Two.")
    owner.make(request, 1000)
    bus.publish_now("table", 1, owner.sent, queue_state_json(owner.channel, owner.now))

    class Hub:
        listeners: dict = {}

        def broadcast(self, channel, *messages):
            pass

    feed = await Feeds(bus, Hub(), lambda: 0).feed("table")
    assert placed(feed.replica.channel.line) == placed(owner.channel.line)
    owner.sent = []
    owner.make(request, 800)
    bus.publish_now("table", 1, owner.sent)
    assert placed(feed.replica.channel.line) == placed(owner.channel.line)


def test_followed_reads_the_runner_while_the_channel_runs_here_and_the_replica_otherwise():
    """A live stream's view of a channel switches with its ownership, read afresh every time."""
    replica = ChannelReplica("table")

    class Runner:
        channel = Channel("table", CFG)

    runners: dict = {}
    followed = Followed(runners, replica)
    assert followed.channel is replica.channel and followed.name == "table"
    runners["table"] = Runner()
    assert followed.channel is Runner.channel


def test_a_pause_and_resume_move_the_replica_as_they_move_the_owner():
    """Paused mid-chunk and resumed later: the replica stands still with the owner, then has every chunk
    that had not ended at the owner's new start, and the cut one going on from the resume; a reset
    from a snapshot taken while paused says so."""
    owner = Owner()
    request = owner.submit("One.", "Two.")
    owner.make(request, 1000, 800)  # 500..1500, 1750..2550
    owner.at(700)
    owner.step(owner.channel.pause(owner.now))  # at 1200
    assert owner.replica.channel.paused_at_ms == 1200
    fresh = ChannelReplica("table")
    fresh.reset(queue_state_json(owner.channel, owner.now))
    assert fresh.channel.paused_at_ms == 1200
    owner.at(5000)
    assert_same(owner)
    owner.now = 6000
    owner.step(owner.channel.resume(owner.now))  # at 6500: a shift of 5300
    assert_same(owner)
    heard = owner.replica.find_request(request.request_id)
    assert owner.replica.channel.paused_at_ms is None
    assert [(c.starts_at_ms, c.from_ms) for c in heard.chunks] == [(5800, 6500), (7050, None)]
    for now in range(6000, 9000, 100):
        owner.at(now)
        assert_same(owner)


def test_the_replica_keeps_the_beds_from_snapshots_and_bed_changed():
    owner = Owner()
    bed = Bed("b1", "ambience", (BedTrack("t1", "Rain", (Segment("s0", 5000),)),), 0, 0.7, -9.0, fade_in_ms=500)
    owner.step(owner.channel.set_bed(bed, owner.now))
    assert owner.replica.channel.bed == owner.channel.bed
    owner.step(owner.channel.stop_bed(800, 3000))
    assert owner.replica.channel.bed is None and owner.replica.channel.fading_beds == owner.channel.fading_beds
    fresh = ChannelReplica("table")
    fresh.reset(queue_state_json(owner.channel, 3000))
    assert fresh.channel.fading_beds == owner.channel.fading_beds


def test_talk_over_is_kept_over_the_track_and_not_in_line():
    owner = Owner()
    song = owner.submit("Song", "Song", kind="track")
    owner.make(song, 5000, 5000)  # 500..10500
    talk = Request("t" * 16, "table", "Stand-up now.", ["Stand-up now."], 1000, over=True)
    owner.now = 1000
    owner.step(owner.channel.submit(talk, owner.now))
    owner.make(talk, 1200)
    assert [r.request_id for r in owner.replica.channel.overlay] == [talk.request_id]
    assert placed(owner.replica.channel.overlay) == placed(owner.channel.overlay)
    assert placed(owner.replica.channel.line) == placed(owner.channel.line)
    fresh = ChannelReplica("table")
    fresh.reset(queue_state_json(owner.channel, owner.now))
    assert placed(fresh.channel.overlay) == placed(owner.channel.overlay)
    owner.at(3000)
    assert (
        owner.replica.channel.overlay == [] and owner.replica.find_request(talk.request_id).state == RequestState.PLAYED
    )


def test_an_open_narration_is_open_in_the_replica_until_its_close_is_announced():
    """A stream read from the replica must not end while the owner's narration is still being written."""
    owner = Owner()
    story = Request(f"{next(_ids):016x}", "table", "One.", ["One."], 0, writing=Writing())
    owner.step(owner.channel.submit(story, 0))
    owner.make(story, 1000)
    owner.at(2000)  # its only sentence has played: it waits for more
    copy = owner.replica.find_request(story.request_id)
    assert copy.writing is not None and not copy.generated
    owner.step(owner.channel.append(story.request_id, " Two.", ["Two."], ("", []), True, 2100))
    assert copy.writing is None and len(copy.sentences) == 2
    owner.make(story, 500)
    assert copy.generated
    assert_same(owner)
