"""The live stream's title (ICY StreamTitle), frame by frame, with no encoder, socket or clock."""

from types import SimpleNamespace

from broadcaster.config import LiveConfig
from broadcaster.core.model import Chunk, Request
from broadcaster.core.titles import item_title, one_line, stream_title
from broadcaster.runtime.live import FRAME_MS, LiveStream
from tts.tracks import ffmetadata_fields


class NoAudio:
    """Every chunk's audio is gone: the stream renders silence, which is all a title test needs."""

    async def read(self, request_id: str, chunk_id: str, fmt: str) -> bytes:
        raise FileNotFoundError(chunk_id)


def item(request_id: str, text: str, *spans: tuple[int, int], **source) -> Request:
    request = Request(request_id, "office", text, [text] * len(spans), 0, **source)
    request.chunks = [
        Chunk(f"{request_id}{i}", request_id, i, text, end - start, 0, starts_at_ms=start)
        for i, (start, end) in enumerate(spans)
    ]
    return request


def stream(*line: Request) -> LiveStream:
    channel = SimpleNamespace(
        recent=[], line=list(line), paused_at_ms=None, bed=None, fading_beds=(), overlay=[], talk_over=lambda now: []
    )
    return LiveStream(SimpleNamespace(name="office", channel=channel), NoAudio(), LiveConfig(), clock=lambda: 0)


async def titles(live: LiveStream, until_ms: int) -> list[str]:
    """The title after each frame, as the render loop sets it."""
    seen = []
    for start in range(0, until_ms, FRAME_MS):
        _, live.title = await live._placed(start, start + FRAME_MS)
        seen.append(live.title)
    return seen


async def test_title_stays_on_the_item_that_ended_through_the_gap():
    """Between two items the title stays on the one that just ended until the next one sounds; never the idle title."""
    live = stream(item("a", "First item.", (0, 1000)), item("b", "Second item.", (1600, 2600)))
    seen = await titles(live, 2600)
    assert seen == ["First item."] * 16 + ["Second item."] * 10


async def test_title_stays_through_the_gap_between_sentences():
    """The gap between two sentences of one item keeps that item's title."""
    live = stream(item("a", "Two sentences. Here.", (0, 500), (750, 1200)))
    assert set(await titles(live, 1200)) == {"Two sentences. Here."}


async def test_idle_title_before_anything_and_after_the_last_item():
    """The idle title shows before the first item sounds and once nothing sounds and nothing is left in line."""
    first = item("a", "Only item.", (300, 800))
    live = stream(first)
    assert (await titles(live, 1000))[:3] == ["office - Broadcaster"] * 3
    live.runner.channel.line.remove(first)  # it finished and left the line
    live.runner.channel.recent.append(first)
    _, title = await live._placed(1000, 1100)
    assert title == "office - Broadcaster"


async def test_a_track_is_titled_artist_dash_title():
    """A track's StreamTitle is "Artist - Title" with an ASCII hyphen, however its label was stored."""
    live = stream(
        item(
            "t",
            "The Oscillators \u2013 Test Tone",
            (0, 1000),
            kind="track",
            title="Test Tone",
            artist="The Oscillators",
        )
    )
    _, title = await live._placed(0, FRAME_MS)
    assert title == "The Oscillators - Test Tone"


def test_stream_title_rules():
    """What sounds names the stream (the item that started last, at a boundary); silence keeps the title while
    anything is in line, and goes idle only when nothing is."""
    assert stream_title("Idle", ["A", "B"], in_line=True, idle="Idle") == "B"
    assert stream_title("A", [], in_line=True, idle="Idle") == "A"
    assert stream_title("Idle", [], in_line=True, idle="Idle") == "Idle"
    assert stream_title("A", [], in_line=False, idle="Idle") == "Idle"


def test_item_titles():
    """Tracks read "Artist - Title" (or the title alone); narration is its text on one line, shortened."""
    track = Request("t", "office", "x", ["x"], 0, kind="track", title="Song", artist="Band")
    assert item_title(track) == "Band - Song"
    track.artist = None
    assert item_title(track) == "Song"
    speech = Request("s", "office", "Two\nlines  here.", ["x"], 0)
    assert item_title(speech) == "Two lines here."
    long = item_title(Request("l", "office", "word " * 100, ["x"], 0))
    assert len(long) == 120 and long.endswith("…")


def test_titles_are_one_line_of_plain_text():
    """What a producer or a file's tags wrote reaches players' displays as one line: NUL would cut the
    title short in players, a direction override would reverse what follows it."""
    said = item("r", "Hello\x00 there\r\nfriend\u202e reversed\x1b[31m red", (0, 1000))
    assert item_title(said) == "Hello there friend reversed [31m red"
    assert one_line("\u2066a\tb\u2069  c\x7f", 3) == "a b"


def test_ffmetadata_escapes_are_undone():
    """ffmpeg's ffmetadata output escapes =, ;, #, backslash and line breaks inside values."""
    text = ";FFMETADATA1\ntitle=Line one\\\nLine two\\\\\nartist=AC\\=DC\\; live \\#1\n#comment=x\nencoder=Lavf"
    assert ffmetadata_fields(text) == [
        ("title", "Line one\nLine two\\"),
        ("artist", "AC=DC; live #1"),
        ("encoder", "Lavf"),
    ]


class DamagedAudio:
    """A stored chunk whose bytes are not FLAC (a damaged file): the render loop died on it, and with it
    the stream, its players waiting for ever."""

    async def read(self, request_id: str, chunk_id: str, fmt: str) -> bytes:
        return b"RIFF this is not audio at all"


async def test_a_chunk_that_does_not_decode_is_silence_in_the_live_stream_not_its_end(caplog):
    live = stream(item("a", "Damaged.", (0, 2000)))
    live.audio = DamagedAudio()
    placed, _ = await live._placed(0, FRAME_MS)
    assert [len(p.samples) for p in placed] == [0]
    assert "does not decode, silence instead" in caplog.text
