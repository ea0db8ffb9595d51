"""Every state and every legal move of requests and chunks, in one table each.

Anything that changes a request's or a chunk's state goes through `advance()`;
a move the tables do not list raises `InvalidTransition` naming state and event.
See docs/state-machine.md for the diagram.
"""

from enum import StrEnum

from broadcaster.errors import InvalidTransition


class RequestState(StrEnum):
    PENDING = "pending"  # queued, no audio yet
    GENERATING = "generating"  # audio being produced and/or on the air
    PLAYED = "played"  # every chunk's end has passed on the timeline
    FAILED = "failed"  # TTS error, generation timeout, or failed storage
    CANCELLED = "cancelled"  # a producer cancelled it while queued, or skipped it on the air


class RequestEvent(StrEnum):
    START = "start_generation"
    FINISH = "finish_playing"
    FAIL = "fail"
    CANCEL = "cancel"


class ChunkState(StrEnum):
    READY = "ready"  # audio stored; scheduled once it has a starts_at_ms
    PLAYED = "played"  # its end passed on the timeline
    DISCARDED = "discarded"  # its request failed before the chunk was heard


class ChunkEvent(StrEnum):
    PLAY_OUT = "play_out"
    DISCARD = "discard"


REQUEST_TRANSITIONS: dict[tuple[RequestState, RequestEvent], RequestState] = {
    (RequestState.PENDING, RequestEvent.START): RequestState.GENERATING,
    (RequestState.PENDING, RequestEvent.FAIL): RequestState.FAILED,
    (RequestState.GENERATING, RequestEvent.FINISH): RequestState.PLAYED,
    (RequestState.GENERATING, RequestEvent.FAIL): RequestState.FAILED,
    (RequestState.PENDING, RequestEvent.CANCEL): RequestState.CANCELLED,
    (RequestState.GENERATING, RequestEvent.CANCEL): RequestState.CANCELLED,
}

CHUNK_TRANSITIONS: dict[tuple[ChunkState, ChunkEvent], ChunkState] = {
    (ChunkState.READY, ChunkEvent.PLAY_OUT): ChunkState.PLAYED,
    (ChunkState.READY, ChunkEvent.DISCARD): ChunkState.DISCARDED,
}

FINAL_REQUEST_STATES = frozenset({RequestState.PLAYED, RequestState.FAILED, RequestState.CANCELLED})


def next_request_state(state: RequestState, event: RequestEvent) -> RequestState:
    try:
        return REQUEST_TRANSITIONS[state, event]
    except KeyError:
        raise InvalidTransition("request", state, event) from None


def next_chunk_state(state: ChunkState, event: ChunkEvent) -> ChunkState:
    try:
        return CHUNK_TRANSITIONS[state, event]
    except KeyError:
        raise InvalidTransition("chunk", state, event) from None
