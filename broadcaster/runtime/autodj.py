"""The auto-DJ: when a radio channel has nothing waiting, it queues a track from the music folder.

Files are dealt from a shuffled deck, so none repeats until all have played;
a new deck never starts with the track that just ended. Its tracks are marked
`auto`, and anything a producer queues goes before the ones not yet on the
air, so narration takes over at the next track boundary. Files that will not
decode are skipped (and logged) rather than stalling the station.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from random import Random

from broadcaster.errors import BadInput

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = {".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".wav"}
ATTEMPTS = 3
RETRY_S = 30  # an empty folder or undecodable files: look again this much later

AddTrack = Callable[[Path], Awaitable[object]]


def radio_files(root: Path, channel: str, ambience: str, others: set[str]) -> list[Path]:
    """What a radio channel plays: music/<channel>/ if it exists, else the music folder, in both cases
    without ambience folders (the console's scenes: beds, not songs); from the music folder also
    without other channels' folders. Read again for every deck, so a folder made later counts."""
    own = root / channel
    folder = own if own.is_dir() else root
    found = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts[:-1]
        if ambience in parts or (folder == root and parts and parts[0] in others):
            continue
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found)


class AutoDJ:
    def __init__(
        self, files: Callable[[], list[Path]], add_track: AddTrack, rng: Random | None = None, where: str = ""
    ):
        self.files = files
        self.add_track = add_track
        self.rng = rng or Random()
        self.where = where  # said when there is nothing to play: the channel, and the folder looked in
        self.deck: list[Path] = []
        self.last: Path | None = None
        self._task: asyncio.Task | None = None
        self._said_empty = False

    def poke(self, needs_filler: Callable[[], bool]) -> None:
        """Add a track if the channel needs one and none is being prepared."""
        if (self._task is None or self._task.done()) and needs_filler():
            self._task = asyncio.create_task(self._fill(needs_filler), name="autodj")
            self._task.add_done_callback(self._said)

    def _said(self, task: asyncio.Task) -> None:
        """A fill that failed (our bug, or the database away) is logged; the next poke tries again."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("auto-DJ %s failed to queue a track", self.where, exc_info=exc)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _fill(self, needs_filler: Callable[[], bool]) -> None:
        while needs_filler():
            for _ in range(ATTEMPTS):
                path = await asyncio.to_thread(self.next_file)
                self._say_if_empty(path is None)
                if path is None or not needs_filler():
                    break
                try:
                    await self.add_track(path)
                    return
                except BadInput as exc:
                    log.warning("auto-DJ skipped %s: %s", path.name, exc)
            await asyncio.sleep(RETRY_S)  # nothing playable now; the folder may change

    def _say_if_empty(self, empty: bool) -> None:
        """Silence on a radio channel is explained in the log once, not every look, and again when it recurs."""
        if empty and not self._said_empty:
            log.warning("auto-DJ %s: no playable files; the channel stays silent, looking again every %d s",
                        self.where, RETRY_S)  # fmt: skip
        self._said_empty = empty

    def next_file(self) -> Path | None:
        if not self.deck:
            self.deck = self._shuffled()
        if not self.deck:
            return None
        self.last = self.deck.pop()
        return self.last

    def _shuffled(self) -> list[Path]:
        files = self.files()
        self.rng.shuffle(files)
        if len(files) > 1 and files[-1] == self.last:  # the deck is dealt from the end
            files[0], files[-1] = files[-1], files[0]
        return files
