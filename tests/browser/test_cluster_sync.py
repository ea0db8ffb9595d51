"""Listener pages in a real browser on two cluster members (one PostgreSQL, one Redis, in this process).

Only one member runs the channel's clock; pages on either must play one timeline, by the same measure
and tolerance as the pages of a single server (test_listener_page.py)."""

import asyncio
import json
from itertools import pairwise
from types import SimpleNamespace

import pytest
import websockets
from cluster_members import Member, owner_of, post, start_member
from conftest import Listener

from broadcaster.runtime.accounts import create_channel

from .test_listener_page import (
    LONG_FIRST,
    NARRATION,
    SYNC_TOLERANCE_MS,
    open_listener,
    p95,
    ready_reports,
    scheduled,
    settled,
    sync_errors,
    wait_played,
    worst,
)

CHANNEL = "table"
# The listener page tests' pace: chunks long enough that a page opened mid-narration joins mid-chunk.
PACE = {
    "tts": {"tone_ms_per_char": 60, "tone_delay_ms": 20},
    "timeline": {"lead_ms": 800, "min_lead_ms": 800, "sentence_gap_ms": 150, "request_gap_ms": 300},
}
QUEUED = "After the storm, silence. Then birds."


@pytest.fixture
async def members(tmp_path, postgres_url, redis_url):
    """Two members and a channel made once both are up: (the member running it, the other, its producer token)."""
    started = [await start_member(tmp_path, postgres_url, redis_url, PACE) for _ in range(2)]
    try:
        made = await create_channel(started[0].station.store, CHANNEL)
        owner = await owner_of(CHANNEL, *started)
        yield owner, next(m for m in started if m is not owner), made.token
    finally:
        for member in started:
            await member.stop()


def on(member: Member) -> SimpleNamespace:
    """What open_listener needs of a server: where it is and which channel to open."""
    return SimpleNamespace(base_url=member.base_url, channel=CHANNEL)


async def observe(member: Member) -> Listener:
    listener = Listener(await websockets.connect(member.ws_url(CHANNEL)))
    await listener.next("snapshot")
    return listener


async def catch_up(listener: Listener, quiet_s: float = 0.2) -> None:
    """Take in everything the listener was sent, until nothing more comes for `quiet_s`."""
    while True:
        try:
            text = await asyncio.wait_for(listener.ws.recv(), quiet_s)
        except TimeoutError:
            return
        listener.messages.append(json.loads(text))


def announced(listener: Listener, request_id: str | None = None) -> dict[str, dict]:
    """The chunks the listener was told of so far, in order (the latest announcement of each)."""
    chunks = {}
    for m in listener.messages:
        if m["type"] == "audio_chunk_ready" and request_id in (None, m["request_id"]):
            chunks[m["chunk_id"]] = m
    return chunks


async def sleep_until(member: Member, server_ms: int) -> None:
    await asyncio.sleep(max(0.0, (server_ms - member.station.clock()) / 1000))


async def watch_connection(page) -> None:
    """From now on the page keeps every change of its connection state in window.connectionChanges."""
    await page.evaluate(
        """() => {
          const status = document.getElementById('connection');
          window.connectionChanges = [];
          new MutationObserver(() => window.connectionChanges.push(status.dataset.state))
            .observe(status, { attributes: true, attributeFilter: ['data-state'] });
        }"""
    )


async def test_pages_on_both_members_and_a_late_joiner_schedule_every_chunk_together(browser, members, page_errors):
    """Pages on both members, and a late joiner on the one not running the channel, schedule each chunk within 5 ms of the timeline and of each other."""
    owner, other, token = members
    observer = await observe(other)
    pages = [await open_listener(browser, on(m), page_errors) for m in (owner, other, owner)]
    await settled(pages)
    status, body = await post(other, CHANNEL, token, LONG_FIRST + NARRATION)  # forwarded to the owner
    assert status == 202, body
    first = await observer.next("audio_chunk_ready")
    await sleep_until(other, first["starts_at_ms"] + 200)
    pages.append(await open_listener(browser, on(other), page_errors))  # joins while the first sentence sounds
    await wait_played(observer, body["request_id"])
    chunk_ids = list(announced(observer))
    records = [await scheduled(p) for p in pages]
    assert all(set(chunk_ids) <= set(r) for r in records[:3])
    assert set(chunk_ids[1:]) <= set(records[3]) and records[3][chunk_ids[0]]["late_ms"] > 0
    against_server, spread = sync_errors(records, chunk_ids)
    assert all(abs(e["decoded_ms"] - e["duration_ms"]) <= 2 for r in records for e in r.values())
    assert p95(against_server) <= SYNC_TOLERANCE_MS, worst(records, chunk_ids)
    assert p95(spread) <= SYNC_TOLERANCE_MS, spread
    # The owner hears the pages' ready reports, those of the other member's pages batched to it.
    count, total_s = await ready_reports(owner, at_least=3)
    assert 3 <= count <= 4 * len(chunk_ids) - 1
    assert 0 < total_s / count < 0.8
    for page in pages:  # each shows the cluster's total: four pages and the observer
        await page.wait_for_function("document.getElementById('listeners').textContent === '5 listening'")
    await observer.ws.close()
    assert page_errors.errors == []


async def test_pages_on_the_other_member_keep_their_place_when_the_owner_stops(browser, members, page_errors):
    """When the member running the channel stops mid-narration, pages on the other keep every announced chunk where it was and play the queued request after it in sync."""
    owner, other, token = members
    observer = await observe(other)
    pages = [await open_listener(browser, on(m), page_errors) for m in (owner, other, other)]
    await settled(pages)
    survivors = pages[1:]
    for page in survivors:
        await watch_connection(page)
    status, playing = await post(other, CHANNEL, token, LONG_FIRST + NARRATION)
    assert status == 202, playing
    status, queued = await post(other, CHANNEL, token, QUEUED)
    assert status == 202, queued
    first = await observer.next("audio_chunk_ready")
    await sleep_until(other, first["starts_at_ms"] + 500)
    await catch_up(observer)
    before = announced(observer)

    await owner.stop()
    assert await owner_of(CHANNEL, other) is other
    await wait_played(observer, playing["request_id"], timeout=30)
    await wait_played(observer, queued["request_id"], timeout=30)
    after = announced(observer)
    assert announced(observer, queued["request_id"]), "the queued request was never announced"
    timeline = sorted(after.values(), key=lambda c: c["starts_at_ms"])
    assert all(a["starts_at_ms"] + a["duration_ms"] <= b["starts_at_ms"] for a, b in pairwise(timeline))
    records = [await scheduled(p) for p in survivors]
    assert all(set(after) <= set(r) for r in records)
    for page in survivors:  # connected throughout, to the member that took the channel over
        assert await page.evaluate("window.connectionChanges") == []
    entries = [e for p in survivors for e in await p.evaluate("window.broadcaster.stats.scheduled")]
    for chunk_id, chunk in before.items():  # nothing announced before the stop moved, on any page
        assert after[chunk_id]["starts_at_ms"] == chunk["starts_at_ms"]
        assert {e["starts_at_ms"] for e in entries if e["chunk_id"] == chunk_id} == {chunk["starts_at_ms"]}
    # The page on the stopped member keeps what it had scheduled: it counts for those chunks.
    records.append(await scheduled(pages[0]))
    against_server, spread = sync_errors(records, list(after))
    assert p95(against_server) <= SYNC_TOLERANCE_MS, worst(records, list(after))
    assert p95(spread) <= SYNC_TOLERANCE_MS, spread
    await observer.ws.close()
    assert page_errors.errors == []
