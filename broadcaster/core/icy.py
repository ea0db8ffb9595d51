"""The live stream's bytes as players receive them, framed once for all of them (pure).

A player that sends `Icy-MetaData: 1` gets a metadata block (its `StreamTitle`)
after every METAINT bytes of audio; a block is a length byte, in 16-byte units,
and the padded text, or a single zero byte when the title has not changed.
Counted per player, each player would need its own copy of every block of the
stream. Here every player counts from the same origin instead: metadata goes
after each stream position that is a multiple of METAINT, and a player joins
at such a position (its burst of recent audio begins there). So at any moment
every player with metadata is owed the same bytes, and so is every player
without; `add` frames each new block of audio once, both ways.

Only a new player's burst is framed apart (once for all who join between two
blocks): its first metadata block carries the title in full, where the shared
stream may have said "unchanged". The title at each position in the burst is
kept for that, and the burst's later blocks say "unchanged" exactly where the
shared stream did, so after its burst a player reads the shared stream knowing
the title it last announced.
"""

from collections import deque

METAINT = 16000  # audio bytes between metadata blocks: 1 s at 128 kbit/s
BURST_BYTES = 32000  # at least this much recent audio starts a new player (2 s at 128 kbit/s)
UNCHANGED = b"\x00"


def title_block(title: str) -> bytes:
    """A metadata block carrying `title` (a quote in it becomes a typographic one; at most 4080 bytes)."""
    safe = title.replace("'", "\u2019")
    meta = f"StreamTitle='{safe}';".encode()[: 255 * 16]
    units = -(-len(meta) // 16)
    return bytes([units]) + meta.ljust(units * 16, b"\x00")


class IcyFraming:
    """The stream so far, for players with and without metadata: each new block framed once, and the
    burst a new player starts with."""

    def __init__(self, metaint: int = METAINT, burst_bytes: int = BURST_BYTES):
        self.metaint, self.burst_bytes = metaint, burst_bytes
        self.position = 0  # audio bytes framed so far
        self._recent = bytearray()  # the audio from stream position _recent_from on
        self._recent_from = 0  # always a multiple of metaint: where a new player's burst starts
        self._titles: deque[tuple[int, str]] = deque()  # (position, title) of each metadata block in _recent
        self._announced: str | None = None  # the last title the shared stream sent in full
        self._bursts: dict[bool, bytes] = {}  # built for the current position

    def add(self, audio: bytes, title: str) -> tuple[bytes, bytes]:
        """The next `audio` of the stream as players without and with metadata receive it; `title` is
        what its metadata blocks announce."""
        start, parts, cut = self.position, [], 0
        at = (start // self.metaint + 1) * self.metaint
        while at <= start + len(audio):
            parts += [audio[cut : at - start], self._block_at(at, title)]
            cut, at = at - start, at + self.metaint
        framed = b"".join([*parts, audio[cut:]]) if parts else audio
        self.position += len(audio)
        self._keep(audio)
        return audio, framed

    def burst(self, icy: bool) -> bytes:
        """What a player joining now gets first: the recent audio from a multiple of metaint, with the
        metadata blocks it holds if `icy` (the first of them in full)."""
        if icy not in self._bursts:
            self._bursts[icy] = self._framed_burst() if icy else bytes(self._recent)
        return self._bursts[icy]

    def _block_at(self, position: int, title: str) -> bytes:
        self._titles.append((position, title))
        if title == self._announced:
            return UNCHANGED
        self._announced = title
        return title_block(title)

    def _keep(self, audio: bytes) -> None:
        self._recent += audio
        self._bursts.clear()
        keep_from = (self.position - self.burst_bytes) // self.metaint * self.metaint
        if keep_from > self._recent_from:
            del self._recent[: keep_from - self._recent_from]
            self._recent_from = keep_from
            while self._titles and self._titles[0][0] <= keep_from:
                self._titles.popleft()

    def _framed_burst(self) -> bytes:
        parts, cut, previous = [], 0, None
        for position, title in self._titles:
            end = position - self._recent_from
            parts += [self._recent[cut:end], UNCHANGED if title == previous else title_block(title)]
            cut, previous = end, title
        return b"".join([*parts, self._recent[cut:]])
