"""A step's save writes each request's state and every chunk row, new or changed, in one transaction,
with the database's own upsert statement, or through the ORM where none is known; a new request
goes to the back of its channel's line. On SQLite and on a real PostgreSQL server."""

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from broadcaster.core.bed import Bed, BedTrack, Segment
from broadcaster.core.ids import new_id
from broadcaster.core.model import Chunk, Request
from broadcaster.core.states import ChunkState, RequestState
from db.store import ChannelState, Store, _chunk_upsert


@pytest.fixture(params=["upsert", "orm"])
async def store(request, database_url):
    made = Store(database_url)
    await made.create_schema()
    if request.param == "orm":
        made._upsert_chunk = None  # as for a database without an upsert statement
    yield made
    await made.close()


def narration(*sentences: str) -> Request:
    return Request(new_id(), "table", " ".join(sentences), list(sentences), 1000)


async def test_saved_chunks_and_states_come_back_as_the_line(store):
    channel_id = (await store.create_channel("table", "digest", 0)).id
    first, second = narration("One.", "Two."), narration("Three.")
    await store.insert_request(first, channel_id)
    await store.insert_request(second, channel_id)
    first.state, first.generation_started_ms = RequestState.GENERATING, 1100
    first.chunks.append(Chunk(new_id(), first.request_id, 0, "One.", 800, 1200, sample_rate=22050, samples=17640))
    await store.save([first])
    first.chunks[0].starts_at_ms = 1700  # placed and played: the same row again, changed
    first.chunks[0].state = ChunkState.PLAYED
    first.chunks.append(Chunk(new_id(), first.request_id, 1, "Two.", 600, 1300))
    await store.save([first, second])
    line, _ = await store.load_line(channel_id, "table")
    assert [r.request_id for r in line] == [first.request_id, second.request_id], "in the order submitted"
    loaded = line[0]
    assert (loaded.state, loaded.generation_started_ms) == (RequestState.GENERATING, 1100)
    assert [(c.seq, c.state, c.starts_at_ms, c.duration_ms) for c in loaded.chunks] == [
        (0, ChunkState.PLAYED, 1700, 800),
        (1, ChunkState.READY, None, 600),
    ]
    assert line[1].chunks == []


async def test_a_new_request_takes_the_place_after_the_last_of_its_own_channel(store):
    table = (await store.create_channel("table", "digest", 0)).id
    other = (await store.create_channel("other", "digest", 0)).id
    submitted = [(narration("Hi."), channel_id) for channel_id in (other, other, table)]
    for request, channel_id in submitted:
        await store.insert_request(request, channel_id)
    async with store.engine.connect() as conn:
        places = dict((await conn.execute(text("SELECT id, line_seq FROM playback_requests"))).all())
    assert [(channel_id, places[r.request_id]) for r, channel_id in submitted] == [(other, 1), (other, 2), (table, 1)]


def test_postgresql_gets_its_own_upsert_and_an_unknown_database_none():
    sql = str(_chunk_upsert("postgresql").compile(dialect=postgresql.dialect()))
    assert "ON CONFLICT (id) DO UPDATE SET" in sql
    assert _chunk_upsert("mysql") is None


async def test_a_channels_pause_and_beds_are_saved_with_its_requests_and_read_back(store):
    channel_id = (await store.create_channel("table", "digest", 0)).id
    playing = Bed("b2", "ambience/tavern", (BedTrack("t2", "Rain", (Segment("s1", 5000), Segment("s2", 900))),), 7000)
    fading = Bed("b1", "ambience/hum.wav", (BedTrack("t1", "Hum", (Segment("s0", 5000),)),), 0, 0.4, -9.5)
    fading = fading.fading_out(7000, 2000)
    await store.save([], state=ChannelState(channel_id, 6500, playing, (fading,)))
    assert await store.channel_state(channel_id) == ChannelState(channel_id, 6500, playing, (fading,))
    assert {"t1", "t2"} <= await store.request_ids()  # their audio is kept by cleanup
    await store.save([], state=ChannelState(channel_id, None))
    assert await store.channel_state(channel_id) == ChannelState(channel_id, None)


async def test_the_lines_order_given_with_a_save_is_the_order_it_loads_in(store):
    """A step that reordered the line saves its order: the places the rows hold, handed out anew, so a
    request inserted later still goes last; a finished request's place is not taken."""
    channel_id = (await store.create_channel("table", "digest", 0)).id
    done, a, b, c = (narration(text) for text in ("Done.", "A.", "B.", "C."))
    for request in (done, a, b, c):
        await store.insert_request(request, channel_id)
    done.state = RequestState.PLAYED
    await store.save([done], order=[c.request_id, a.request_id, b.request_id])
    line, _ = await store.load_line(channel_id, "table")
    assert [r.request_id for r in line] == [c.request_id, a.request_id, b.request_id]
    later = narration("Later.")
    await store.insert_request(later, channel_id)
    line, _ = await store.load_line(channel_id, "table")
    assert [r.request_id for r in line] == [c.request_id, a.request_id, b.request_id, later.request_id]


async def test_the_recent_history_comes_back_in_the_order_requests_finished(store):
    """What a restart (or a new owner) shows as the channel's recent history: the last finished
    requests, oldest first, with their chunks; nothing still in line."""
    channel_id = (await store.create_channel("table", "digest", 0)).id
    requests = [narration(f"Number {n}.") for n in range(5)]
    for request in requests:
        await store.insert_request(request, channel_id)
    for request, finished_at in zip(requests[:4], (5000, 3000, 4000, 6000)):
        request.state, request.finished_at_ms = RequestState.PLAYED, finished_at
        request.chunks.append(Chunk(new_id(), request.request_id, 0, request.text, 800, 1200))
    requests[1].state, requests[1].error = RequestState.CANCELLED, "cancelled by the producer"
    await store.save(requests)
    recent = await store.load_recent(channel_id, "table", 3)
    assert [r.request_id for r in recent] == [requests[i].request_id for i in (2, 0, 3)]
    assert all(len(r.chunks) == 1 for r in recent) and recent[-1].state == RequestState.PLAYED
    assert [r.request_id for r in await store.load_recent(channel_id, "table", 10)][0] == requests[1].request_id
