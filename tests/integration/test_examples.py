"""The examples run as the README says, against a real server: a simulated model's word stream piped into
`broadcaster say --stream`, and the Python client example; every sentence of the scene is spoken once, in order."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tts.sentences import split_sentences

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "examples" / "tavern.txt"


async def run_shell(command: str) -> str:
    proc = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out
    return out.decode()


async def spoken(server, request_id: str) -> list[str]:
    request = await server.station.find_request(request_id)
    return request.sentences


@pytest.mark.parametrize("example", ["pipe", "python"])
async def test_an_example_narrates_the_scene_as_it_is_written(server, example):
    py = sys.executable
    if example == "pipe":
        out = await run_shell(
            f"{py} examples/fake_llm.py {SCENE} --words-per-second 400 | "
            f"{py} -m broadcaster say table --stream --server {server.base_url} --token {server.token}"
        )
        answer = json.loads(out)
    else:
        out = await run_shell(
            f"{py} examples/narrate_stream.py --server {server.base_url} --channel table "
            f"--token {server.token} --words-per-second 400 {SCENE}"
        )
        assert "closed: 7 sentences" in out
        answer = {"request_id": out.split()[1], "open": False}
    assert answer["open"] is False
    assert await spoken(server, answer["request_id"]) == split_sentences(SCENE.read_text())
