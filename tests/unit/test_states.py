"""The request and chunk transition tables."""

import pytest

from broadcaster.core.states import (
    ChunkEvent,
    ChunkState,
    RequestEvent,
    RequestState,
    next_chunk_state,
    next_request_state,
)
from broadcaster.errors import BroadcasterError, InvalidTransition


def test_request_lifecycle_follows_the_table():
    """A request goes pending -> generating -> played."""
    state = next_request_state(RequestState.PENDING, RequestEvent.START)
    assert state == RequestState.GENERATING
    assert next_request_state(state, RequestEvent.FINISH) == RequestState.PLAYED


@pytest.mark.parametrize("state", [RequestState.PENDING, RequestState.GENERATING])
def test_unfinished_requests_can_fail(state):
    """Pending and generating requests may fail."""
    assert next_request_state(state, RequestEvent.FAIL) == RequestState.FAILED


@pytest.mark.parametrize("state", [RequestState.PLAYED, RequestState.FAILED])
@pytest.mark.parametrize("event", list(RequestEvent))
def test_final_request_states_accept_nothing(state, event):
    """Played and failed are final: every event raises InvalidTransition naming state and event."""
    with pytest.raises(InvalidTransition) as caught:
        next_request_state(state, event)
    assert state.value in str(caught.value) and event.value in str(caught.value)
    assert isinstance(caught.value, BroadcasterError)


def test_pending_request_cannot_finish_playing():
    """A request that never generated audio cannot be played."""
    with pytest.raises(InvalidTransition):
        next_request_state(RequestState.PENDING, RequestEvent.FINISH)


def test_chunk_states():
    """A ready chunk is played out or discarded, and nothing else happens to it afterwards."""
    assert next_chunk_state(ChunkState.READY, ChunkEvent.PLAY_OUT) == ChunkState.PLAYED
    assert next_chunk_state(ChunkState.READY, ChunkEvent.DISCARD) == ChunkState.DISCARDED
    with pytest.raises(InvalidTransition):
        next_chunk_state(ChunkState.PLAYED, ChunkEvent.DISCARD)


def test_states_serialize_as_their_names():
    """States are StrEnums, so JSON shows 'generating', not an enum repr."""
    assert f"{RequestState.GENERATING}" == "generating"
