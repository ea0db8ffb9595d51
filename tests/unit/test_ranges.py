import pytest

from broadcaster.errors import BadInput
from web.ranges import ByteRange, MalformedRange, RangeNotSatisfiable, parse_range

TOTAL = 1000


def test_no_header_serves_whole_resource():
    """A missing Range header yields None."""
    assert parse_range(None, TOTAL) is None


def test_closed_range():
    """bytes=a-b selects bytes a through b inclusive."""
    assert parse_range("bytes=0-99", TOTAL) == ByteRange(0, 99)


def test_open_ended_range_runs_to_end():
    """bytes=a- selects from a to the last byte."""
    assert parse_range("bytes=500-", TOTAL) == ByteRange(500, 999)


def test_end_is_clamped_to_last_byte():
    """An end past the resource is clamped to total-1."""
    assert parse_range("bytes=900-5000", TOTAL) == ByteRange(900, 999)


def test_suffix_range():
    """bytes=-n selects the last n bytes."""
    assert parse_range("bytes=-100", TOTAL) == ByteRange(900, 999)


def test_suffix_longer_than_resource_is_whole_resource():
    """A suffix longer than the resource selects all of it as a range."""
    assert parse_range("bytes=-5000", TOTAL) == ByteRange(0, 999)


def test_zero_suffix_is_not_satisfiable():
    """bytes=-0 selects nothing and is a 416."""
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-0", TOTAL)


def test_whitespace_around_tokens_is_tolerated():
    """Spaces and tabs around the unit and numbers are ignored."""
    assert parse_range(" bytes = 10 -\t20 ", TOTAL) == ByteRange(10, 20)


def test_unit_is_case_insensitive():
    """The range unit matches case-insensitively."""
    assert parse_range("BYTES=1-2", TOTAL) == ByteRange(1, 2)


def test_other_unit_is_ignored():
    """A unit other than bytes yields None."""
    assert parse_range("items=0-1", TOTAL) is None


@pytest.mark.parametrize(
    "header",
    [
        "bytes=abc",
        "bytes=5-2",
        "bytes=-",
        "bytes=",
        "bytes=-5-10",
        "bytes=--5",
        "bytes=1-2-3",
        "bytes=1 0-20",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits
        "bytes=0-\u0669",
        "bytes 0-1",
        "=0-1",
        "",
        "bytes=" + "1" * 200 + "-",
    ],
)
def test_syntactically_invalid_is_malformed(header):
    """Syntactically invalid headers raise MalformedRange."""
    with pytest.raises(MalformedRange):
        parse_range(header, TOTAL)


def test_multiple_valid_ranges_are_ignored():
    """Several well-formed ranges yield None (serve whole with 200)."""
    assert parse_range("bytes=0-1, 5-6", TOTAL) is None


def test_multiple_ranges_with_a_malformed_part_are_malformed():
    """Any malformed part in a multi-range header raises MalformedRange."""
    with pytest.raises(MalformedRange):
        parse_range("bytes=0-1,abc", TOTAL)


def test_empty_list_elements_are_tolerated():
    """Empty elements in the range list are skipped, per the RFC list rule."""
    assert parse_range("bytes=0-1,", TOTAL) == ByteRange(0, 1)


def test_start_at_total_is_not_satisfiable():
    """A start equal to the resource size raises RangeNotSatisfiable."""
    with pytest.raises(RangeNotSatisfiable):
        parse_range(f"bytes={TOTAL}-", TOTAL)


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=0-0", "bytes=-1"])
def test_empty_resource_is_not_satisfiable(header):
    """Any bytes range against a zero-byte resource raises RangeNotSatisfiable."""
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 0)


def test_errors_carry_http_status_and_message():
    """Both errors are BadInput with 400/416 statuses and a message quoting the header."""
    with pytest.raises(MalformedRange) as malformed:
        parse_range("bytes=abc", TOTAL)
    with pytest.raises(RangeNotSatisfiable) as unsatisfiable:
        parse_range("bytes=2000-", TOTAL)
    assert isinstance(malformed.value, BadInput) and malformed.value.status == 400
    assert isinstance(unsatisfiable.value, BadInput) and unsatisfiable.value.status == 416
    assert "'bytes=abc'" in str(malformed.value)
    assert "'bytes=2000-'" in str(unsatisfiable.value)


def test_byte_range_length_and_content_range():
    """ByteRange reports its inclusive length and Content-Range value."""
    byte_range = ByteRange(0, 99)
    assert byte_range.length == 100
    assert byte_range.content_range(1234) == "bytes 0-99/1234"
