"""On a real server: listeners that report needing longer to have a chunk in hand get a longer lead
for what goes on the air next; a bad report is refused and changes nothing."""

import pytest

from broadcaster.runtime.accounts import create_channel

from .test_metrics import scrape

FLOOR_MS = 300  # the test servers' [timeline] lead_ms
UNMEASURED_S = (FLOOR_MS + 1) / 1000  # one listener, nothing reported: the starting lead and a millisecond


async def lead_s(server) -> float:
    return (await scrape(server)).value("broadcaster_lead_seconds", channel=server.channel)


async def test_a_slow_audience_gets_a_longer_lead_on_the_next_narration(server, connect):
    listener = await connect()
    await listener.next("snapshot")
    assert (await server.say("First words.")).status == 202
    first = await listener.next("audio_chunk_ready")
    placed_ms = first["starts_at_ms"] - FLOOR_MS  # an idle channel: placed one lead ahead of now
    await listener.send({"type": "audio_played", "chunk_id": first["chunk_id"], "ready_at_ms": placed_ms + 1500})
    assert (await listener.next("ack_recorded"))["duplicate"] is False
    assert await lead_s(server) == pytest.approx(1.65, abs=0.02)  # what it needed, plus the margin
    metrics = await scrape(server)
    assert metrics.value("broadcaster_listener_ready_seconds_count") == 1
    assert metrics.value("broadcaster_listener_ready_seconds_sum") == pytest.approx(1.5, abs=0.02)
    await listener.next("request_played", timeout=20)

    asked_ms = server.station.clock()
    assert (await server.say("Second words.")).status == 202
    second = await listener.next("audio_chunk_ready")
    # placed one measured lead (1.65 s) after it was made, not the 300 ms floor after
    assert second["starts_at_ms"] - asked_ms >= 1600
    assert await lead_s(server) == pytest.approx(1.65, abs=0.02)


@pytest.mark.parametrize("ready_at", ["soon", True, 1.5, [], "far"])
async def test_a_bad_ready_time_is_refused_and_records_nothing(server, connect, ready_at):
    listener = await connect()
    await listener.next("snapshot")
    assert (await server.say("Some words.")).status == 202
    chunk = await listener.next("audio_chunk_ready")
    if ready_at == "far":
        ready_at = chunk["starts_at_ms"] + 10 * 86_400_000
    await listener.send({"type": "audio_played", "chunk_id": chunk["chunk_id"], "ready_at_ms": ready_at})
    error = await listener.next("error")
    assert error["code"] == "bad_request" and '"ready_at_ms"' in error["message"]
    assert await lead_s(server) == UNMEASURED_S
    # the refused acknowledgement was not recorded either: this one is the first
    await listener.send({"type": "audio_played", "chunk_id": chunk["chunk_id"]})
    assert (await listener.next("ack_recorded"))["duplicate"] is False


async def test_a_report_from_another_channels_listener_changes_no_lead(server, connect):
    """Its channel did not place the chunk: the acknowledgement is refused on its socket, and no lead moves."""
    await create_channel(server.station.store, "other")
    outsider = await connect("other")
    await outsider.next("snapshot")
    listener = await connect()
    await listener.next("snapshot")
    assert (await server.say("Our words.")).status == 202
    chunk = await listener.next("audio_chunk_ready")
    await outsider.send({"type": "audio_played", "chunk_id": chunk["chunk_id"], "ready_at_ms": chunk["starts_at_ms"]})
    assert (await outsider.next("error"))["code"] == "wrong_channel"
    metrics = await scrape(server)
    assert metrics.value("broadcaster_lead_seconds", channel=server.channel) == UNMEASURED_S
    assert metrics.value("broadcaster_lead_seconds", channel="other") == UNMEASURED_S
    assert metrics.value("broadcaster_listener_ready_seconds_count") == 0
