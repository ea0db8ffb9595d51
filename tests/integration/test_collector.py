"""`broadcaster serve` freezes its start-up heap out of the cycle collector's walks (unless told not to),
and /metrics reports that and the collector's pauses; by default it freezes a grown audience, and thaws
once enough of it has left."""

import asyncio
import gc
import socket
from collections import Counter

import pytest
from conftest import raw_websocket
from server_process import ServerProcess, cli, metric

from broadcaster.runtime.collector import AT_LEAST
from web.keys import HUB

MODES = [("", True), ('gc_freeze = "startup"', True), ('gc_freeze = "survivors"', True), ('gc_freeze = "off"', False)]


@pytest.mark.parametrize("setting,frozen", MODES)
async def test_the_server_freezes_its_start_up_heap_as_configured(tmp_path, setting, frozen):
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\n{setting}\n[tts]\nengine = "tone"\n')
    server = ServerProcess(tmp_path / "data", config)
    await server.start()
    try:
        count = await metric(server, "broadcaster_gc_frozen_objects")
        full = await metric(server, "broadcaster_gc_pause_seconds_count", 'generation="2"')
        if frozen:
            assert count > 10_000  # modules, classes and the schema: tens of thousands of objects
            assert full >= 1  # the collection before freezing was timed like any other
            assert "start-up heap frozen" in (tmp_path / f"server-{server.starts}.log").read_text()
        else:
            assert count == 0
        assert server.proc.poll() is None
    finally:
        server.stop()


async def test_a_grown_audience_is_frozen_and_thawed_once_enough_of_it_has_left(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[tts]\nengine = "tone"\n[limits]\nmax_connections_per_address = 0\n')
    cli("channel", "create", "table", "--json", data_dir=tmp_path / "data", config=config)
    server = ServerProcess(tmp_path / "data", config)
    await server.start()
    sockets: list[socket.socket] = []
    try:
        log = tmp_path / "server-1.log"
        url = f"ws{server.base_url.removeprefix('http')}/ws/channels/table"
        sockets = [(await raw_websocket(url))[0] for _ in range(4 * AT_LEAST)]
        # 400 newcomers: the next full collection, the collector's own or the freezer's at its check, is
        # followed by a freeze of what survived it.
        async with asyncio.timeout(120):
            while "newly arrived frozen" not in log.read_text():
                await asyncio.sleep(0.05)
        for sock in sockets:  # the frozen audience turns over: all of it leaves
            sock.close()
        async with asyncio.timeout(120):  # counted every 5 s
            while "frozen objects walked once" not in log.read_text():
                await asyncio.sleep(0.2)
        assert await metric(server, "broadcaster_gc_frozen_objects") > 10_000, "counted by the walk"
        assert server.proc.poll() is None
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


async def test_listeners_who_leave_leave_next_to_nothing_in_reference_cycles(server):
    """What a departed listener leaves in cycles waits for a full collection, and once frozen for a thaw.
    asyncio's transport keeps one of its own (5 objects); ours and aiohttp's are broken here (47 -> 5
    per abrupt departure, as these are, and 48 -> 5 per closing handshake; found with gc.DEBUG_SAVEALL)."""
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
