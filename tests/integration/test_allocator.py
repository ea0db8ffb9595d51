"""`broadcaster serve` runs with the small-object allocator its config names: by default it starts
itself over with PYTHONMALLOC=malloc (same process id), and "pymalloc" or an explicit environment
setting is left alone."""

from pathlib import Path

import pytest
from server_process import ServerProcess, metric


def environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


@pytest.mark.parametrize(
    "setting,inherited,expected",
    [
        ("", None, "malloc"),  # the default
        ('allocator = "pymalloc"', None, None),
        ("", "pymalloc_debug", "pymalloc_debug"),  # the operator's explicit choice wins
    ],
)
async def test_the_server_runs_with_the_configured_allocator(tmp_path, monkeypatch, setting, inherited, expected):
    """The running server's environment shows the allocator chosen, and it serves."""
    if inherited is None:
        monkeypatch.delenv("PYTHONMALLOC", raising=False)
    else:
        monkeypatch.setenv("PYTHONMALLOC", inherited)
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\n{setting}\n[tts]\nengine = "tone"\n')
    server = ServerProcess(tmp_path / "data", config)
    await server.start()  # healthy: it answered /healthz after any restart
    try:
        assert environment(server.proc.pid).get("PYTHONMALLOC") == expected
        assert server.proc.poll() is None
        # live memory is counted by whichever allocator holds Python's objects
        in_use, blocks = (
            await metric(server, "broadcaster_malloc_in_use_bytes"),
            await metric(server, "broadcaster_python_heap_blocks"),
        )
        if expected == "malloc":
            assert blocks == 0 and in_use > 20_000_000
        elif expected is None:
            assert blocks > 10_000 and in_use > 1_000_000
    finally:
        server.stop()
