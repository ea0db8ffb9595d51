"""The pre-framed broadcast: a frame any WebSocket client parses as the text it carries."""

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from web.fanout import text_frame


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frame_round_trips_through_a_websocket_parser(size):
    text = ("é" * size)[:size]
    reader = StreamReader()
    reader.feed_data(text_frame(text))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert frame.opcode == Opcode.TEXT and frame.fin and frame.data.decode() == text
