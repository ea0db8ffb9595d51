"""`broadcaster serve` freezes its start-up heap out of the cycle collector's walks (unless told not to),
and /metrics reports that and the collector's pauses."""

import pytest

from server_process import ServerProcess, metric


@pytest.mark.parametrize("setting,frozen", [("", True), ('gc_freeze = "survivors"', True), ('gc_freeze = "off"', False)])
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
