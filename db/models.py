"""Tables. Times are integer Unix epoch milliseconds on the server clock."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ChannelRow(Base):
    __tablename__ = "channels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    style: Mapped[str] = mapped_column(String(16), default="campaign", server_default="campaign")  # or "radio"
    listen_key_hash: Mapped[str | None] = mapped_column(String(64))  # set: a private channel
    paused_at_ms: Mapped[int | None] = mapped_column(BigInteger)  # set: paused, everything stopped at this moment
    beds_json: Mapped[str | None] = mapped_column(Text)  # the beds under the line (db/beds.py)


class RequestRow(Base):
    __tablename__ = "playback_requests"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    line_seq: Mapped[int] = mapped_column(BigInteger)  # submission order within the channel
    text: Mapped[str] = mapped_column(Text)
    sentences_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    generation_started_ms: Mapped[int | None] = mapped_column(BigInteger)
    finished_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16), default="speech", server_default="speech")
    title: Mapped[str | None] = mapped_column(Text)
    artist: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    auto: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    talk_over: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")  # narration over the track
    open_json: Mapped[str | None] = mapped_column(Text)  # set while the narration is open: its unfinished tail
    voice: Mapped[str | None] = mapped_column(String(64))  # narration in a named voice ([tts.voices])
    __table_args__ = (
        Index("ix_requests_channel_state", "channel_id", "state"),
        Index("ix_requests_finished", "state", "finished_at_ms"),
    )


class ChunkRow(Base):
    __tablename__ = "audio_chunks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("playback_requests.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    sample_rate: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(BigInteger)
    channels: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    duration_ms: Mapped[int] = mapped_column(Integer)
    ready_at_ms: Mapped[int] = mapped_column(BigInteger)
    starts_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (UniqueConstraint("request_id", "seq"),)


class ConnectionRow(Base):
    __tablename__ = "listener_connections"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    remote: Mapped[str] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(String(256))
    connected_at_ms: Mapped[int] = mapped_column(BigInteger)
    disconnected_at_ms: Mapped[int | None] = mapped_column(BigInteger, index=True)
    holder: Mapped[str | None] = mapped_column(String(100))  # the server process that has it (a lease holder id)


class DeliveryRow(Base):
    """One acknowledgement: this connection (or an anonymous HTTP client) played this chunk."""

    __tablename__ = "chunk_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_id: Mapped[str] = mapped_column(ForeignKey("audio_chunks.id", ondelete="CASCADE"), index=True)
    connection_id: Mapped[str | None] = mapped_column(ForeignKey("listener_connections.id", ondelete="CASCADE"))
    via: Mapped[str] = mapped_column(String(8))  # "ws" or "http"
    acked_at_ms: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (UniqueConstraint("chunk_id", "connection_id"),)


class LeaseRow(Base):
    """Who runs what: a server (on SQLite, one at a time) or a channel's clock (in a cluster, one owner).

    Acquired and renewed in one statement on the database's own clock; `epoch` grows each time the
    holder changes, and writes and announcements carry it, so a holder whose lease lapsed is refused."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # "server" or "channel:<name>"
    holder: Mapped[str] = mapped_column(String(100))  # one process: host, pid and a random part
    holder_url: Mapped[str] = mapped_column(String(300), default="", server_default="")  # where it takes requests
    epoch: Mapped[int] = mapped_column(BigInteger)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)  # by the database's clock


# Audio in the database: where every process of a cluster must serve every chunk (db/audio_database.py).
# No foreign keys to the requests: a track's audio is stored before its request row, and the purge
# deletes rows before bytes; audio no request claims is found by the orphan sweep instead.


class ChunkAudioRow(Base):
    """The bytes of one chunk in one format (FLAC or MP3), stored once and never changed."""

    __tablename__ = "chunk_audio"
    chunk_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    fmt: Mapped[str] = mapped_column(String(4), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(32), index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    written_at_ms: Mapped[int] = mapped_column(BigInteger)  # by the database's clock


class TrackAudioRow(Base):
    """A track request's audio: the segments of `source_id`, the request that decoded them (itself, or
    the original of a repeat or retry, which shares them)."""

    __tablename__ = "track_audio"
    request_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(32), index=True)
    written_at_ms: Mapped[int] = mapped_column(BigInteger)  # by the database's clock


class TrackSegmentRow(Base):
    """One segment of a decoded track as FLAC: normalized stereo PCM, cut as the track's chunks are."""

    __tablename__ = "track_segments"
    source_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
