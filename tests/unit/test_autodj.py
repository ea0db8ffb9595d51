"""Which files a radio channel's auto-DJ plays: its own folder, else the music folder without what
belongs to others (other channels' folders, the scenes' ambience)."""

import asyncio
import logging
from pathlib import Path

from broadcaster.runtime import autodj
from broadcaster.runtime.autodj import AutoDJ, radio_files


def files(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_the_music_folder_without_other_channels_or_ambience(tmp_path):
    """Playing from the music folder: songs anywhere, but not another channel's nor any ambience."""
    files(tmp_path, "a.mp3", "albums/b.flac", "office/c.mp3", "ambience/rain.ogg", "albums/ambience/d.wav", "e.txt")
    found = radio_files(tmp_path, "cafe", "ambience", {"office", "lobby"})
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.mp3", "albums/b.flac"]


def test_its_own_folder_once_it_exists(tmp_path):
    """A channel's folder made after it started is used from the next deal on, without its scenes."""
    files(tmp_path, "a.mp3")
    assert [p.name for p in radio_files(tmp_path, "cafe", "ambience", set())] == ["a.mp3"]
    files(tmp_path, "cafe/own.mp3", "cafe/ambience/tavern/loop.ogg")
    assert [p.relative_to(tmp_path).as_posix() for p in radio_files(tmp_path, "cafe", "ambience", set())] == [
        "cafe/own.mp3"
    ]


async def test_a_silent_radio_says_why_once_and_again_when_it_recurs(tmp_path, caplog, monkeypatch):
    """No playable files: the log names the channel and folder once (not at every look); once files came
    and went again, it says so again."""
    monkeypatch.setattr(autodj, "RETRY_S", 0)
    found: list[list[Path]] = [[], [], [], [tmp_path / "a.mp3"], [], []]
    added: list[Path] = []

    async def add(path: Path) -> None:
        added.append(path)

    dj = AutoDJ(lambda: found.pop(0) if found else [], add, where="on office ([music] folder /srv/music)")
    with caplog.at_level(logging.WARNING, logger=autodj.__name__):
        await dj._fill(lambda: not added)
        assert added == [tmp_path / "a.mp3"]
        await dj._fill(lambda: len(found) > 0)
    said = [r.getMessage() for r in caplog.records]
    assert said == ["auto-DJ on office ([music] folder /srv/music): no playable files; the channel stays silent, "
                    "looking again every 0 s"] * 2, said  # fmt: skip


async def test_a_fill_that_fails_is_logged_and_the_next_poke_tries_again(tmp_path, caplog):
    """Anything but a file that will not decode ended the fill without a word (an exception nobody read)."""
    calls = []

    async def add(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError("the database is away")

    dj = AutoDJ(lambda: [tmp_path / "a.mp3"], add, where="on office")
    with caplog.at_level(logging.ERROR, logger=autodj.__name__):
        dj.poke(lambda: len(calls) < 2)
        await asyncio.gather(dj._task, return_exceptions=True)
    assert "auto-DJ on office failed to queue a track" in caplog.text
    dj.poke(lambda: len(calls) < 2)
    await dj._task
    assert len(calls) == 2
