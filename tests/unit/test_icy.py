"""ICY framing of the live stream: blocks framed once for every player, and a new player's burst."""

from broadcaster.core.icy import IcyFraming, title_block


def parse(stream: bytes, metaint: int) -> tuple[bytes, list[str | None]]:
    """What a player reading `stream` from its first byte sees: the audio, and each metadata block's
    title (None for "unchanged"). Fails if a block is not where metaint puts it."""
    audio, titles = bytearray(), []
    while len(stream) > metaint:
        audio += stream[:metaint]
        units = stream[metaint]
        block, stream = stream[metaint + 1 : metaint + 1 + units * 16], stream[metaint + 1 + units * 16 :]
        assert len(block) == units * 16, "a metadata block was cut short"
        if units:
            text = block.rstrip(b"\x00").decode()
            assert text.startswith("StreamTitle='") and text.endswith("';"), text
            titles.append(text[13:-2])
        else:
            titles.append(None)
    return bytes(audio + stream), titles


def test_metadata_follows_every_metaint_bytes_and_an_unchanged_title_is_one_zero_byte():
    """With metaint 10, a block follows every 10 audio bytes, across block edges; the title is sent in full once."""
    framing = IcyFraming(metaint=10, burst_bytes=15)
    plain, framed = framing.add(b"A" * 25, "Song")
    _, more = framing.add(b"B" * 5, "Song")
    block = b"StreamTitle='Song';".ljust(32, b"\x00")
    assert plain == b"A" * 25
    assert framed + more == b"A" * 10 + b"\x02" + block + b"A" * 10 + b"\x00" + b"A" * 5 + b"B" * 5 + b"\x00"


def test_a_quote_in_a_title_cannot_end_the_field():
    """A straight quote in the title becomes a typographic one, so StreamTitle='...'; stays well formed."""
    assert title_block("Rock 'n' Roll")[1:].rstrip(b"\x00") == "StreamTitle='Rock \u2019n\u2019 Roll';".encode()


def test_a_joiner_reads_its_burst_then_the_shared_stream_in_one_rhythm():
    """A player that joins mid-stream gets audio from a multiple of metaint, metadata every metaint bytes
    from its own first byte, the title in full at its first block, and then exactly the shared bytes."""
    framing = IcyFraming(metaint=10, burst_bytes=25)
    early = bytearray()
    for i, title in enumerate(["One"] * 6 + ["Two"] * 6):
        if i == 8:
            burst = framing.burst(icy=True)
            plain_burst = framing.burst(icy=False)
            joined = bytearray(burst)
        _, framed = framing.add(bytes([65 + i]) * 7, title)
        early += framed
        if i >= 8:
            joined += framed
    early_audio, early_titles = parse(bytes(early), 10)
    joined_audio, joined_titles = parse(bytes(joined), 10)
    assert early_audio.endswith(joined_audio) and joined_audio.startswith(plain_burst)
    assert len(plain_burst) >= 25 and (len(early_audio) - len(joined_audio)) % 10 == 0
    assert early_titles == ["One", None, None, None, "Two", None, None, None]
    assert joined_titles == ["One", "Two", None, None, None]  # its first block in full, then as the shared stream


def test_the_burst_is_the_same_object_until_the_stream_moves_on():
    """Players joining at the same position share one burst; a new block makes a new one."""
    framing = IcyFraming(metaint=10, burst_bytes=25)
    framing.add(b"A" * 40, "One")
    first = framing.burst(icy=True)
    assert framing.burst(icy=True) is first
    framing.add(b"B" * 7, "One")
    assert framing.burst(icy=True) is not first


def test_recent_audio_is_bounded():
    """The stream keeps less than burst_bytes + metaint of audio, however long it runs."""
    framing = IcyFraming(metaint=10, burst_bytes=25)
    for _ in range(1000):
        framing.add(b"x" * 7, "One")
    assert 25 <= len(framing.burst(icy=False)) < 35
