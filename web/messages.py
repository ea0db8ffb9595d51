"""The public JSON shapes: how requests, chunks and events look on the wire (docs/protocol.md)."""

from itertools import islice
from typing import Any

from broadcaster.core.bed import Bed, scalars
from broadcaster.core.channel import Channel
from broadcaster.core.events import (
    BedChanged,
    ChannelPaused,
    ChannelResumed,
    ChunkScheduled,
    Event,
    QueueChanged,
    RequestCancelled,
    RequestClosed,
    RequestFailed,
    RequestPlayed,
    StreamStarted,
    TimelineShifted,
)
from broadcaster.core.model import Chunk, Request


def chunk_url(chunk_id: str) -> str:
    return f"/api/audio/chunks/{chunk_id}"


def stream_url(request_id: str) -> str:
    return f"/api/audio/stream/{request_id}"


def chunk_json(chunk: Chunk) -> dict[str, Any]:
    wire = {
        "chunk_id": chunk.chunk_id,
        "seq": chunk.seq,
        "starts_at_ms": chunk.starts_at_ms,
        "duration_ms": chunk.duration_ms,
        "url": chunk_url(chunk.chunk_id),
        "text": chunk.text,
    }
    if chunk.from_ms is not None:
        wire["from_ms"] = chunk.from_ms  # cut by a pause: heard again only from then
    return wire


def source_json(request: Request) -> dict[str, Any]:
    """What the request is: narration, or a track with its tags."""
    if request.kind != "track":
        wire: dict[str, Any] = {"kind": "speech"}
        if request.over:
            wire["over"] = True
        if request.writing is not None:
            wire["open"] = True  # more sentences may come: chunks_total may grow
        if request.voice is not None:
            wire["voice"] = request.voice
        return wire
    return {
        "kind": "track",
        "title": request.title,
        "artist": request.artist,
        "duration_ms": request.duration_ms,
        "auto": request.auto,
    }


PREVIEW_CHARS = 200  # of a waiting or finished request's text: every queue update carries it to every listener


def preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def queue_item_json(request: Request, position: int) -> dict[str, Any]:
    item = {
        "request_id": request.request_id,
        "status": request.state.value,
        "position": position,
        "text": preview(request.text),
        **source_json(request),
        "chunks_ready": len(request.chunks),
        "chunks_total": len(request.sentences),
        "starts_at_ms": request.starts_at_ms,
    }
    # With a lead longer than the gap between requests, the next request's first chunk goes on the air
    # while the one before still sounds: a snapshot must carry it, as its announcement came before.
    placed = [chunk_json(c) for c in request.live_chunks() if c.scheduled]
    if placed:
        item["chunks"] = placed
    return item


def now_playing_json(channel: Channel, now_ms: int) -> dict[str, Any] | None:
    head = channel.now_playing()
    if head is None:
        return None
    position = channel.position(now_ms)
    return {
        **on_air_json(head),
        "position": None
        if position is None
        else {"chunk_id": position.chunk.chunk_id, "offset_ms": position.offset_ms},
    }


def on_air_json(request: Request) -> dict[str, Any]:
    """A request on the air (or about to be) with its placed chunks."""
    return {
        "request_id": request.request_id,
        "status": request.state.value,
        "starts_at_ms": request.starts_at_ms,
        "text": request.text,
        **source_json(request),
        "chunks_total": len(request.sentences),
        "stream_url": stream_url(request.request_id),
        "chunks": [chunk_json(c) for c in request.live_chunks() if c.scheduled],
    }


# Queue items a pushed message lists: the next ones, with `queue_length` for the rest. Every listener
# gets every queue update, so its size is paid once per listener; the queue endpoint lists them all.
QUEUE_LISTED = 20


def queue_json(channel: Channel, listed: int | None = QUEUE_LISTED) -> list[dict[str, Any]]:
    """The requests waiting after the one on the air, in line order: the first `listed` of them (None: all)."""
    head = channel.now_playing()
    waiting = ((i, r) for i, r in enumerate(channel.line) if r is not head)
    return [queue_item_json(r, i) for i, r in islice(waiting, listed)]


def queue_length(channel: Channel) -> int:
    """How many requests wait after the one on the air: what `queue_json` lists, and what it may leave out."""
    return len(channel.line) - (channel.now_playing() is not None)


def recent_json(channel: Channel, limit: int = 10) -> list[dict[str, Any]]:
    """The latest finished requests, newest first (the console offers a retry on failed ones)."""
    return [
        {
            "request_id": r.request_id,
            "status": r.state.value,
            "text": preview(r.text),
            "error": r.error,
            "finished_at_ms": r.finished_at_ms,
        }
        for r in list(channel.recent)[::-1][:limit]
    ]


TAKEOVER = "takeover"  # on the bus only: a new owner's state, which every feed resynchronises its listeners to


def takeover_json(state: dict[str, Any]) -> dict[str, Any]:
    """What a process publishes first when it takes a channel: its state as restored from the database.
    The last owner may have saved steps it never announced (it died, or its announcements waited out a
    Redis outage and were then refused as stale), so what listeners were told may fall short of it."""
    return {"type": TAKEOVER, "state": state}


def queue_state_json(channel: Channel, now_ms: int, listed: int | None = QUEUE_LISTED) -> dict[str, Any]:
    return {
        "server_time_ms": now_ms,
        "now_playing": now_playing_json(channel, now_ms),
        "queue": queue_json(channel, listed),
        "queue_length": queue_length(channel),
        "recent": recent_json(channel),
        "repeat": channel.repeat.value,
        "paused_at_ms": channel.paused_at_ms,
        "over": [on_air_json(r) for r in channel.overlay],
        **beds_json(channel.name, channel.bed, channel.fading_beds),
        "speech_ms": [list(span) for span in channel.speech(now_ms)],
    }


def beds_json(channel: str, bed: Bed | None, fading: tuple[Bed, ...]) -> dict[str, Any]:
    return {
        "bed": None if bed is None else bed_json(channel, bed),
        "fading_beds": [bed_json(channel, b) for b in fading],
    }


def bed_json(channel: str, bed: Bed) -> dict[str, Any]:
    return {
        **scalars(bed),
        "loop_ms": bed.loop_ms,
        "tracks": [
            {
                "track_id": track.request_id,
                "title": track.title,
                "segments": [
                    {
                        "chunk_id": s.chunk_id,
                        "duration_ms": s.duration_ms,
                        "url": bed_segment_url(channel, track.request_id, s.chunk_id),
                    }
                    for s in track.segments
                ],
            }
            for track in bed.tracks
        ],
    }


def bed_segment_url(channel: str, track_id: str, chunk_id: str) -> str:
    return f"/api/channels/{channel}/beds/{track_id}/{chunk_id}"


def refresh_snapshot(state: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A channel's stored state (`queue_state_json` when it was published) as of `now_ms`: the
    server's time and where the timeline is (standing still at a pause). Everything else changes
    only with a step."""
    fresh = {**state, "server_time_ms": now_ms}
    playing, paused_at = state.get("now_playing"), state.get("paused_at_ms")
    if playing is not None:
        at = now_ms if paused_at is None else min(now_ms, paused_at)
        fresh["now_playing"] = {**playing, "position": _position_json(playing["chunks"], at)}
    return fresh


def _position_json(chunks: list[dict[str, Any]], now_ms: int) -> dict[str, Any] | None:
    """What `position_at` gives for the announced chunks, from their wire form."""
    upcoming = None
    for chunk in chunks:
        start = chunk["starts_at_ms"]
        if start <= now_ms < start + chunk["duration_ms"]:
            return {"chunk_id": chunk["chunk_id"], "offset_ms": now_ms - start}
        if start > now_ms and upcoming is None:
            upcoming = chunk
    return (
        None if upcoming is None else {"chunk_id": upcoming["chunk_id"], "offset_ms": now_ms - upcoming["starts_at_ms"]}
    )


def event_json(event: Event, channel: Channel) -> dict[str, Any] | None:
    """The message announcing `event`, or None for events listeners do not need."""
    match event:
        case StreamStarted(request):
            return {
                "type": "audio_stream_started",
                "request_id": request.request_id,
                "starts_at_ms": request.starts_at_ms,
                "stream_url": stream_url(request.request_id),
                "text": request.text,
                "chunks_total": len(request.sentences),
                **source_json(request),
            }
        case ChunkScheduled(request, chunk):
            return {"type": "audio_chunk_ready", "request_id": request.request_id, **chunk_json(chunk)}
        case TimelineShifted(request, chunk, shift_ms):
            return {
                "type": "timeline_shifted",
                "request_id": request.request_id,
                "chunk_id": chunk.chunk_id,
                "starts_at_ms": chunk.starts_at_ms,
                "shift_ms": shift_ms,
            }
        case RequestFailed(request, reason, failed_at_ms, discarded):
            return {
                "type": "request_failed",
                "request_id": request.request_id,
                "reason": reason,
                "failed_at_ms": failed_at_ms,
                "audio_ends_at_ms": request.finished_at_ms,
                "discarded_chunk_ids": list(discarded),
            }
        case RequestCancelled(request, skipped, stopped_at_ms, discarded):
            return {
                "type": "request_cancelled",
                "request_id": request.request_id,
                "skipped": skipped,
                "stopped_at_ms": stopped_at_ms,
                "discarded_chunk_ids": list(discarded),
            }
        case ChannelPaused(at_ms):
            return {"type": "channel_paused", "paused_at_ms": at_ms}
        case ChannelResumed(paused_at_ms, at_ms) as resumed:
            return {
                "type": "channel_resumed",
                "paused_at_ms": paused_at_ms,
                "resumes_at_ms": at_ms,
                "shift_ms": resumed.shift_ms,
            }
        case BedChanged(bed, fading):
            return {"type": "bed_changed", **beds_json(channel.name, bed, fading)}
        case RequestPlayed(request):
            return {"type": "request_played", "request_id": request.request_id, "ended_at_ms": request.finished_at_ms}
        case RequestClosed(request):
            return {"type": "request_closed", "request_id": request.request_id, "chunks_total": len(request.sentences)}
        case QueueChanged():
            return {
                "type": "playback_queue_updated",
                "queue": queue_json(channel),
                "queue_length": queue_length(channel),
                "recent": recent_json(channel),
                "repeat": channel.repeat.value,
            }
    return None


def error_json(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}
