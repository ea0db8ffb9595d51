"""The title a radio player shows for the live stream (ICY StreamTitle), decided frame by frame (pure).

Rippers such as streamripper cut a new file at every title change, and players split
artist from title on an ASCII " - ". So a track reads "Artist - Title", and the title
changes only where one item gives way to the next: through the silence between two
sentences or two items it stays on the item that just ended. The idle title shows only
before anything has played and once nothing sounds and nothing is left in line.
"""

import unicodedata
from collections.abc import Sequence

from .model import Request

TITLE_LIMIT = 120  # characters; the metadata block holds 4080 bytes, players show far less
LABEL_LIMIT = 200  # characters of a track's title or artist, as its tags or file name give them
# Direction overrides and isolates: in a title they would reorder what players show after them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def one_line(text: str, limit: int = LABEL_LIMIT) -> str:
    """`text` as one line of plain text: control characters (NUL, line breaks, escapes) and direction
    overrides become spaces, runs of spaces one, and it is cut to `limit` characters."""
    kept = "".join(" " if unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS else c for c in text)
    return " ".join(kept.split())[:limit]


def item_title(request: Request) -> str:
    """A track's "Artist - Title" (its title alone without an artist); a narration's text, on one line."""
    if request.kind == "track" and request.title:
        text = f"{request.artist} - {request.title}" if request.artist else request.title
    else:
        text = request.text
    text = one_line(text, len(text))
    return text if len(text) <= TITLE_LIMIT else text[: TITLE_LIMIT - 1] + "…"


def stream_title(previous: str, sounding: Sequence[str], in_line: bool, idle: str) -> str:
    """The title for one frame of the stream.

    `sounding`: titles of the items heard in the frame, in timeline order (the last one
    started last, so at a boundary the title moves straight to the next item);
    `in_line`: an item is on the air or waiting; `previous`: the title so far.
    """
    if sounding:
        return sounding[-1]
    return previous if in_line else idle
