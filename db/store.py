"""The database adapter: turns core objects into rows and back. No decisions here."""

import asyncio
import json
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from broadcaster.core.bed import Bed
from broadcaster.core.model import Chunk, Request, Writing
from broadcaster.core.states import FINAL_REQUEST_STATES, ChunkState, RequestState
from broadcaster.errors import BadInput

from .acks import AckLog
from .beds import beds_from_json, beds_json
from .connections import ConnectionLog
from .leases import NOW_MS, Lease, LeaseLost, Leases
from .models import ChannelRow, ChunkRow, ConnectionRow, DeliveryRow, RequestRow
from .uninterrupted import single_reads, uninterrupted

CLOSE_WAIT_S = 5.0  # at a stop, how long calls still under way may take to give their connections back
FINAL = tuple(state.value for state in FINAL_REQUEST_STATES)


@dataclass(frozen=True)
class ChannelState:
    """What a channel keeps besides its requests: when it was paused (None: playing) and its beds."""

    channel_id: int
    paused_at_ms: int | None
    bed: Bed | None = None
    fading_beds: tuple[Bed, ...] = ()


def _state_statement(state: ChannelState):  # noqa: ANN202
    beds = beds_json(state.bed, state.fading_beds)
    return (
        update(ChannelRow)
        .where(ChannelRow.id == state.channel_id)
        .values(paused_at_ms=state.paused_at_ms, beds_json=beds)
    )


def make_engine(url: str) -> AsyncEngine:
    # No ping as a connection leaves the pool (with asyncpg, three round trips): one the server closed (it
    # restarted) is known closed already and replaced, and one found dropped by a call's first statement
    # makes that call run again on a fresh connection (db/uninterrupted.py).
    engine = create_async_engine(url)
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine.sync_engine, "checkout")
        def _closed(dbapi_conn, _record, _proxy) -> None:  # noqa: ANN001
            if dbapi_conn.driver_connection.is_closed():
                raise DisconnectionError("the server closed this pooled connection")  # the pool connects anew

    if engine.dialect.name == "sqlite":
        # WAL lets the CLI and cron write while the server reads; busy_timeout makes
        # a writer wait for a lock instead of failing at once.
        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


class Store:
    def __init__(self, url: str, holder: str | None = None):
        self.engine = make_engine(url)
        self._reads = single_reads(self.engine)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)
        self._upsert_chunk = _chunk_upsert(self.engine.dialect.name)  # None: no upsert statement known
        self.leases = Leases(self.engine) if self.engine.dialect.name in NOW_MS else None
        self.connection_log = ConnectionLog(self.session, holder)  # holder: this process (leases' name for it)
        # acknowledgements refer to connection rows: those are written first
        self.ack_log = AckLog(self.session, self.engine.dialect.name, before=self.connection_log.flush)

    @uninterrupted
    async def create_schema(self) -> None:
        """Create a new database's tables, or check that this one's revision is the code's (db/schema.py).
        Two processes doing it at once on a new database (two CLI commands, or the CLI and the server) race;
        the loser finds the tables made, or the revision stamped, and tries again."""
        from .schema import prepare  # Alembic loads on the first database opened, not at import

        for attempt in range(3):
            try:
                return await prepare(self.engine)
            except DBAPIError:
                if attempt == 2:
                    raise

    async def close(self) -> None:
        await self.connection_log.close()
        await self.ack_log.close()
        await self._connections_back()
        await self.engine.dispose()

    async def _connections_back(self) -> None:
        """Wait (a little) for calls still under way: a read shared by several requests, or a write whose
        caller left (db/uninterrupted.py), may outlive the handler that asked. A connection given back
        after `dispose` would go to the pool it left behind and never be closed."""
        pool = self.engine.pool
        deadline = asyncio.get_running_loop().time() + CLOSE_WAIT_S
        while getattr(pool, "checkedout", lambda: 0)() > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    # -- channels ----------------------------------------------------------

    @uninterrupted
    async def create_channel(
        self, name: str, token_hash: str, now_ms: int, style: str = "campaign", listen_key_hash: str | None = None
    ) -> ChannelRow:
        row = ChannelRow(
            name=name, token_hash=token_hash, created_at_ms=now_ms, style=style, listen_key_hash=listen_key_hash
        )
        try:
            async with self.session.begin() as s:
                s.add(row)
        except IntegrityError:
            raise BadInput(f"expected a new channel name, but {name!r} already exists") from None
        return row

    @uninterrupted
    async def channel(self, name: str) -> ChannelRow | None:
        async with self.session() as s:
            return (await s.execute(select(ChannelRow).where(ChannelRow.name == name))).scalar_one_or_none()

    @uninterrupted
    async def channel_id(self, name: str) -> int | None:
        """The channel's id alone, read for every listener that connects to a channel run by another
        process: a plain statement, like token_hash."""
        async with self._reads.connect() as conn:
            return (await conn.execute(CHANNEL_ID, {"name": name})).scalar()

    @uninterrupted
    async def token_hash(self, name: str) -> str | None:
        """The producer token's digest alone, read on every producer write: a plain statement on a
        connection costs half of a session's ORM query (docs/performance.md)."""
        async with self._reads.connect() as conn:
            return (await conn.execute(TOKEN_HASH, {"name": name})).scalar()

    @uninterrupted
    async def set_token_hash(self, name: str, token_hash: str) -> bool:
        async with self.session.begin() as s:
            result = await s.execute(update(ChannelRow).where(ChannelRow.name == name).values(token_hash=token_hash))
            return result.rowcount == 1

    @uninterrupted
    async def set_listen_key_hash(self, name: str, key_hash: str | None) -> bool:
        async with self.session.begin() as s:
            result = await s.execute(update(ChannelRow).where(ChannelRow.name == name).values(listen_key_hash=key_hash))
            return result.rowcount == 1

    @uninterrupted
    async def channels(self) -> list[ChannelRow]:
        async with self.session() as s:
            return list((await s.execute(select(ChannelRow).order_by(ChannelRow.id))).scalars())

    # -- requests and chunks -------------------------------------------------

    # Submitting a request and saving a step come before the listeners hear of them, so these are
    # plain statements on a connection, each one round trip to SQLite's thread, not ORM sessions.

    # In a cluster a channel's owner passes its lease: the write proves, in its own transaction, that
    # the lease is still held, or is refused with LeaseLost (db/leases.py). None: the embedded server.

    @uninterrupted
    async def insert_request(self, request: Request, channel_id: int, lease: Lease | None = None) -> None:
        async with self.engine.begin() as conn:
            await self._fence(conn, lease)
            await conn.execute(INSERT_REQUEST, {**_request_values(request, channel_id), "line_of": channel_id})

    @uninterrupted
    async def save(
        self,
        requests: list[Request],
        lease: Lease | None = None,
        state: ChannelState | None = None,
        order: list[str] | None = None,
    ) -> None:
        """Write the current state of these requests and all their chunks, the channel's own state if given,
        and the line's order (its request ids) if given: in one transaction (a resume moves chunks and beds;
        all or nothing survives a crash)."""
        if not requests and state is None and not order:
            return
        chunks = [_chunk_values(chunk) for request in requests for chunk in request.chunks]
        if self._upsert_chunk is None and lease is None:
            return await self._save_with_orm(requests, chunks, state, order)
        async with self.engine.begin() as conn:
            await self._fence(conn, lease)
            if requests:
                await conn.execute(UPDATE_REQUEST, [_request_state(request) for request in requests])
            if chunks:
                await conn.execute(self._upsert_chunk, chunks)
            if state is not None:
                await conn.execute(_state_statement(state))
            if order:
                await _write_order(conn, order)

    async def _fence(self, conn, lease: Lease | None) -> None:  # noqa: ANN001
        if lease is None:
            return
        if self.leases is None:
            raise LeaseLost(
                f"expected SQLite or PostgreSQL for a channel owner's writes, got {self.engine.dialect.name}"
            )
        await self.leases.fence(conn, lease)

    async def _save_with_orm(
        self, requests: list[Request], chunks: list[dict], state: ChannelState | None, order: list[str] | None
    ) -> None:
        """For a database without an upsert statement here: a session merges each chunk row."""
        async with self.session.begin() as s:
            if requests:
                await s.execute(UPDATE_REQUEST, [_request_state(request) for request in requests])
            for values in chunks:
                await s.merge(ChunkRow(**values))
            if state is not None:
                await s.execute(_state_statement(state))
            if order:
                await _write_order(s, order)

    @uninterrupted
    async def channel_state(self, channel_id: int) -> ChannelState:
        """When the channel stopped, if it is paused, and its beds."""
        async with self.session() as s:
            row = (
                await s.execute(
                    select(ChannelRow.paused_at_ms, ChannelRow.beds_json).where(ChannelRow.id == channel_id)
                )
            ).one()
        bed, fading = beds_from_json(row.beds_json)
        return ChannelState(channel_id, row.paused_at_ms, bed, fading)

    @uninterrupted
    async def load_line(self, channel_id: int, channel: str) -> tuple[list[Request], int | None]:
        """Unfinished requests in submission order, and where finished audio last ended."""
        async with self.session() as s:
            rows = (
                (
                    await s.execute(
                        select(RequestRow)
                        .where(RequestRow.channel_id == channel_id, RequestRow.state.not_in(FINAL))
                        .order_by(RequestRow.line_seq)
                    )
                )
                .scalars()
                .all()
            )
            played_end = (
                await s.execute(
                    select(func.max(RequestRow.finished_at_ms)).where(
                        RequestRow.channel_id == channel_id, RequestRow.state.in_(FINAL)
                    )
                )
            ).scalar()
            requests = [await self._with_chunks(s, row, channel) for row in rows]
        return requests, played_end

    @uninterrupted
    async def load_recent(self, channel_id: int, channel: str, limit: int) -> list[Request]:
        """The channel's last `limit` finished requests, the oldest first: its recent history."""
        async with self.session() as s:
            rows = (
                (
                    await s.execute(
                        select(RequestRow)
                        .where(RequestRow.channel_id == channel_id, RequestRow.state.in_(FINAL))
                        .order_by(RequestRow.finished_at_ms.desc(), RequestRow.line_seq.desc())
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            return [await self._with_chunks(s, row, channel) for row in reversed(rows)]

    @uninterrupted
    async def request(self, request_id: str) -> Request | None:
        async with self.session() as s:
            row = await s.get(RequestRow, request_id)
            if row is None:
                return None
            channel = await s.get(ChannelRow, row.channel_id)
            return await self._with_chunks(s, row, channel.name)

    @uninterrupted
    async def chunk(self, chunk_id: str) -> Chunk | None:
        async with self.session() as s:
            row = await s.get(ChunkRow, chunk_id)
            return _chunk(row) if row else None

    async def _with_chunks(self, s, row: RequestRow, channel: str) -> Request:  # noqa: ANN001
        chunks = (
            await s.execute(select(ChunkRow).where(ChunkRow.request_id == row.id).order_by(ChunkRow.seq))
        ).scalars()
        return Request(
            request_id=row.id,
            channel=channel,
            text=row.text,
            sentences=json.loads(row.sentences_json),
            created_at_ms=row.created_at_ms,
            state=RequestState(row.state),
            generation_started_ms=row.generation_started_ms,
            finished_at_ms=row.finished_at_ms,
            error=row.error,
            chunks=[_chunk(c) for c in chunks],
            kind=row.kind or "speech",
            title=row.title,
            artist=row.artist,
            duration_ms=row.duration_ms,
            auto=bool(row.auto),
            over=bool(row.talk_over),
            writing=_writing(row.open_json),
            voice=row.voice,
        )

    # -- listeners and acknowledgements ----------------------------------------

    def open_connection(self, conn_id: str, channel_id: int, remote: str, agent: str, now_ms: int) -> None:
        """Record a listener's arrival (written within moments, see db/connections.py)."""
        self.connection_log.opened(conn_id, channel_id, remote, agent, now_ms)

    def close_connection(self, conn_id: str, now_ms: int) -> None:
        self.connection_log.closed(conn_id, now_ms)

    @uninterrupted
    async def connection_times(self, conn_id: str) -> tuple[int, int | None] | None:
        """(connected_at_ms, disconnected_at_ms or None) of one connection record, None if there is none."""
        await self.connection_log.flush()
        async with self.session() as s:
            row = await s.get(ConnectionRow, conn_id)
            return None if row is None else (row.connected_at_ms, row.disconnected_at_ms)

    @uninterrupted
    async def close_stale_connections(self, now_ms: int) -> None:
        """After a restart no earlier connection is alive."""
        await self.connection_log.flush()
        async with self.session.begin() as s:
            await s.execute(
                update(ConnectionRow)
                .where(ConnectionRow.disconnected_at_ms.is_(None))
                .values(disconnected_at_ms=now_ms)
            )

    @uninterrupted
    async def close_connections_of_others(self, live: set[str], before_ms: int, now_ms: int) -> int:
        """In a cluster: close the records still open of processes that are gone (their holder is not in
        `live`), opened before `before_ms` (a process that just started may not have announced itself yet)."""
        await self.connection_log.flush()
        async with self.session.begin() as s:
            result = await s.execute(
                update(ConnectionRow)
                .where(
                    ConnectionRow.disconnected_at_ms.is_(None),
                    ConnectionRow.connected_at_ms < before_ms,
                    ConnectionRow.holder.is_(None) | ConnectionRow.holder.not_in(live),
                )
                .values(disconnected_at_ms=now_ms)
            )
            return result.rowcount

    @uninterrupted
    async def connection_exists(self, conn_id: str) -> bool:
        if self.connection_log.pending(conn_id):
            return True
        async with self.session() as s:
            return await s.get(ConnectionRow, conn_id) is not None

    async def record_ack(self, chunk_id: str, connection_id: str | None, via: str, now_ms: int) -> bool:
        """Record one acknowledgement (written within moments, see db/acks.py); False if this
        connection had already acknowledged the chunk."""
        return await self.ack_log.record(chunk_id, connection_id, via, now_ms)

    @uninterrupted
    async def acks(self, connection_id: str) -> list[tuple[str, int]]:
        await self.ack_log.flush()
        async with self.session() as s:
            rows = await s.execute(
                select(DeliveryRow.chunk_id, DeliveryRow.acked_at_ms)
                .where(DeliveryRow.connection_id == connection_id)
                .order_by(DeliveryRow.id)
            )
            return [(r[0], r[1]) for r in rows]

    # -- cleanup ---------------------------------------------------------------

    @uninterrupted
    async def purge_finished(self, before_ms: int) -> list[str]:
        """Delete played and failed requests that finished before `before_ms`, with their chunks and acks."""
        await self.connection_log.flush()
        async with self.session.begin() as s:
            ids = list(
                (
                    await s.execute(
                        select(RequestRow.id).where(RequestRow.state.in_(FINAL), RequestRow.finished_at_ms < before_ms)
                    )
                ).scalars()
            )
            await _delete_requests(s, ids)
            await s.execute(
                delete(ConnectionRow).where(
                    ConnectionRow.disconnected_at_ms < before_ms,
                    ~ConnectionRow.id.in_(
                        select(DeliveryRow.connection_id).where(DeliveryRow.connection_id.is_not(None))
                    ),
                )
            )
        return ids

    @uninterrupted
    async def delete_channel(self, name: str) -> list[str] | None:
        """Delete a channel with its requests, chunks, acknowledgements and connections (None: no such
        channel). Returns the ids whose audio to delete: its requests' and its beds' tracks'."""
        async with self.session.begin() as s:
            channel = (await s.execute(select(ChannelRow).where(ChannelRow.name == name))).scalar_one_or_none()
            if channel is None:
                return None
            ids = list((await s.execute(select(RequestRow.id).where(RequestRow.channel_id == channel.id))).scalars())
            await _delete_requests(s, ids)
            connections = select(ConnectionRow.id).where(ConnectionRow.channel_id == channel.id)
            await s.execute(delete(DeliveryRow).where(DeliveryRow.connection_id.in_(connections)))
            await s.execute(delete(ConnectionRow).where(ConnectionRow.channel_id == channel.id))
            bed, fading = beds_from_json(channel.beds_json)
            tracks = [track.request_id for b in (bed, *fading) if b is not None for track in b.tracks]
            await s.delete(channel)
        return [*ids, *tracks]

    @uninterrupted
    async def request_ids(self) -> set[str]:
        """Every request whose audio is kept: those stored, and the tracks of every channel's beds."""
        async with self.session() as s:
            ids = set((await s.execute(select(RequestRow.id))).scalars())
            for text in (
                await s.execute(select(ChannelRow.beds_json).where(ChannelRow.beds_json.is_not(None)))
            ).scalars():
                bed, fading = beds_from_json(text)
                ids |= {track.request_id for b in (bed, *fading) if b is not None for track in b.tracks}
            return ids


async def _delete_requests(s: AsyncSession, ids: list[str]) -> None:
    """Requests with their chunks and the acknowledgements of those chunks, in batches."""
    for batch in _batches(ids, 500):
        chunk_ids = select(ChunkRow.id).where(ChunkRow.request_id.in_(batch))
        await s.execute(delete(DeliveryRow).where(DeliveryRow.chunk_id.in_(chunk_ids)))
        await s.execute(delete(ChunkRow).where(ChunkRow.request_id.in_(batch)))
        await s.execute(delete(RequestRow).where(RequestRow.id.in_(batch)))


async def _write_order(conn, order: list[str]) -> None:  # noqa: ANN001
    """The line's order as its rows' `line_seq`: the places they hold now, handed out in the line's order
    (a request inserted later still goes one past the highest place taken)."""
    rows = (await conn.execute(select(_requests.c.id, _requests.c.line_seq).where(_requests.c.id.in_(order)))).all()
    stored = {row.id for row in rows}
    ids = [request_id for request_id in order if request_id in stored]
    places = sorted(row.line_seq for row in rows)
    if len(ids) > 1:
        await conn.execute(SET_PLACE, [{"request_id": i, "place": p} for i, p in zip(ids, places, strict=True)])


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


TOKEN_HASH = select(ChannelRow.token_hash).where(ChannelRow.name == bindparam("name"))
CHANNEL_ID = select(ChannelRow.id).where(ChannelRow.name == bindparam("name"))
_requests, _chunks = RequestRow.__table__, ChunkRow.__table__
# A request goes to the back of its channel's line: one past the highest place taken.
INSERT_REQUEST = insert(_requests).values(
    line_seq=select(func.coalesce(func.max(_requests.c.line_seq), 0) + 1)
    .where(_requests.c.channel_id == bindparam("line_of"))
    .scalar_subquery()
)
SET_PLACE = update(_requests).where(_requests.c.id == bindparam("request_id")).values(line_seq=bindparam("place"))
UPDATE_REQUEST = (
    update(_requests)
    .where(_requests.c.id == bindparam("request_id"))
    .values(
        state=bindparam("new_state"),
        generation_started_ms=bindparam("new_generation_started_ms"),
        finished_at_ms=bindparam("new_finished_at_ms"),
        error=bindparam("new_error"),
        talk_over=bindparam("new_over"),
        text=bindparam("new_text"),
        sentences_json=bindparam("new_sentences_json"),
        open_json=bindparam("new_open_json"),
    )
)


def _chunk_upsert(dialect: str):  # noqa: ANN202
    """Insert a chunk row or overwrite the one with its id, in the database's own words."""
    insert_for = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(dialect)
    if insert_for is None:
        return None
    statement = insert_for(_chunks)
    return statement.on_conflict_do_update(
        index_elements=[_chunks.c.id],
        set_={column.name: statement.excluded[column.name] for column in _chunks.c if column.name != "id"},
    )


def _request_values(request: Request, channel_id: int) -> dict:
    return dict(
        id=request.request_id,
        channel_id=channel_id,
        text=request.text,
        sentences_json=json.dumps(request.sentences),
        state=request.state.value,
        created_at_ms=request.created_at_ms,
        generation_started_ms=request.generation_started_ms,
        finished_at_ms=request.finished_at_ms,
        error=request.error,
        kind=request.kind,
        title=request.title,
        artist=request.artist,
        duration_ms=request.duration_ms,
        auto=request.auto,
        talk_over=request.over,
        open_json=_open_json(request),
        voice=request.voice,
    )


def _request_state(request: Request) -> dict:
    return dict(
        request_id=request.request_id,
        new_state=request.state.value,
        new_generation_started_ms=request.generation_started_ms,
        new_finished_at_ms=request.finished_at_ms,
        new_error=request.error,
        new_over=request.over,
        new_text=request.text,  # an open narration's grow
        new_sentences_json=json.dumps(request.sentences),
        new_open_json=_open_json(request),
    )


def _chunk_values(chunk: Chunk) -> dict:
    return dict(
        id=chunk.chunk_id,
        request_id=chunk.request_id,
        seq=chunk.seq,
        text=chunk.text,
        state=chunk.state.value,
        sample_rate=chunk.sample_rate,
        samples=chunk.samples,
        duration_ms=chunk.duration_ms,
        ready_at_ms=chunk.ready_at_ms,
        starts_at_ms=chunk.starts_at_ms,
        channels=chunk.channels,
    )


def _chunk(row: ChunkRow) -> Chunk:
    return Chunk(
        chunk_id=row.id,
        request_id=row.request_id,
        seq=row.seq,
        text=row.text,
        duration_ms=row.duration_ms,
        ready_at_ms=row.ready_at_ms,
        state=ChunkState(row.state),
        starts_at_ms=row.starts_at_ms,
        sample_rate=row.sample_rate,
        samples=row.samples,
        channels=row.channels or 1,
    )


def _open_json(request: Request) -> str | None:
    writing = request.writing
    if writing is None:
        return None
    return json.dumps({"tail": writing.tail, "tail_sentences": list(writing.tail_sentences)})


def _writing(text: str | None) -> Writing | None:
    """An open narration's tail; its idle times start again when the channel is restored."""
    if text is None:
        return None
    data = json.loads(text)
    return Writing(data["tail"], tuple(data["tail_sentences"]))
