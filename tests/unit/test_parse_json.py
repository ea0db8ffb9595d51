"""What hostile JSON becomes before it reaches a handler (web/http_util.py parse_json)."""

import json

import pytest

from broadcaster.errors import BadInput
from web.http_util import MAX_NESTING, parse_json


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("raw", [nested(MAX_NESTING), nested(MAX_NESTING).encode()])
def test_nesting_up_to_the_limit_is_parsed(raw):
    assert json.dumps(parse_json(raw)) == json.dumps(json.loads(raw))


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 2000, 100_000])
def test_deeper_nesting_is_refused_before_the_parser_recurses(depth):
    for raw in (nested(depth), nested(depth).encode(), '{"a":' * depth + "1" + "}" * depth):
        with pytest.raises(BadInput, match="nested at most"):
            parse_json(raw)


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"type": "x", "text": "[{" * 5000, "quote": 'a "[" \\ ['})
    assert parse_json(text)["text"] == "[{" * 5000


def test_many_brackets_side_by_side_are_not_depth():
    text = json.dumps({"type": "sync_report", "glitches": [[1, 2]] * 1000})
    assert len(parse_json(text)["glitches"]) == 1000


def test_unbalanced_and_invalid_text_is_still_invalid_json():
    for raw in ("]" * 500 + "[" * 10, "[" * 10, b"\xff\xfe["):
        with pytest.raises(BadInput):
            parse_json(raw)


def test_escapes_are_read_as_the_parser_reads_them():
    hidden = '["\\"' + "[" * 200 + '"]'  # an escaped quote: the brackets are still inside the string
    assert parse_json(hidden) == ['"' + "[" * 200]
    outside = '["\\\\",' + nested(200) + "]"  # an escaped backslash: the string ends, the brackets are outside
    with pytest.raises(BadInput, match="nested at most"):
        parse_json(outside)
