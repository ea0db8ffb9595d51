"""Which files a radio channel's auto-DJ plays: its own folder, else the music folder without what
belongs to others (other channels' folders, the scenes' ambience)."""

from pathlib import Path

from broadcaster.runtime.autodj import radio_files


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
