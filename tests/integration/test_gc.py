"""`broadcaster serve` freezes its start-up heap out of the cycle collector's walks once, and /metrics
reports that and the collector's pauses; a listener who leaves leaves next to nothing in reference cycles."""

import asyncio
import gc
from collections import Counter

from conftest import raw_websocket
from server_process import ServerProcess, metric

from web.keys import HUB


async def test_the_server_freezes_its_start_up_heap_once(tmp_path):
    """After start-up tens of thousands of objects are frozen, the collection before it was timed, and it says so."""
    config = tmp_path / "config.toml"
    config.write_text('[tts]\nengine = "tone"\n')
    server = ServerProcess(tmp_path / "data", config)
    await server.start()
    try:
        assert await metric(server, "broadcaster_gc_frozen_objects") > 10_000  # modules, classes, the schema
        assert await metric(server, "broadcaster_gc_pause_seconds_count", 'generation="2"') >= 1
        assert "start-up heap frozen" in (tmp_path / f"server-{server.starts}.log").read_text()
        assert server.proc.poll() is None
    finally:
        server.stop()


async def test_listeners_who_leave_leave_next_to_nothing_in_reference_cycles(server):
    """What a departed listener leaves in cycles waits for a full collection. asyncio's transport keeps
    one of its own (5 objects); ours and aiohttp's are broken (47 -> 5 per abrupt departure, as these
    are, and 48 -> 5 per closing handshake; found with gc.DEBUG_SAVEALL)."""
    departures = 50
    sockets = [(await raw_websocket(server.ws_url()))[0] for _ in range(departures)]
    hub = server.app[HUB]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # the collector keeps what it would free, so it can be counted
    try:
        for sock in sockets:
            sock.close()
        async with asyncio.timeout(30):
            while hub.audience() != (0, departures):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the handlers finish: connection records closed, transports released
        gc.collect()
        left = Counter(type(obj).__qualname__ for obj in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert sum(left.values()) <= 10 * departures, left.most_common(12)
