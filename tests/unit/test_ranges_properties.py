from hypothesis import given
from hypothesis import strategies as st

from web.ranges import ByteRange, MalformedRange, RangeNotSatisfiable, parse_range

totals = st.integers(min_value=0, max_value=10**12)
# Bias arbitrary text towards range-like headers so deep paths get exercised too.
headers = st.one_of(
    st.text(),
    st.text(alphabet="bytes=-0123456789, \t\u0661", max_size=40),
    st.builds(lambda s: "bytes=" + s, st.text(max_size=60)),
)


@given(headers, totals)
def test_any_header_gives_none_a_valid_range_or_a_range_error(header, total):
    """Arbitrary text yields None, an in-bounds ByteRange, or one of the two range errors."""
    try:
        result = parse_range(header, total)
    except (MalformedRange, RangeNotSatisfiable):
        return
    assert result is None or 0 <= result.start <= result.end < total


@given(st.data(), st.integers(min_value=1, max_value=10**12))
def test_valid_closed_range_is_returned_exactly(data, total):
    """bytes=a-b with a <= b < total yields exactly (a, b)."""
    start = data.draw(st.integers(min_value=0, max_value=total - 1))
    end = data.draw(st.integers(min_value=start, max_value=total - 1))
    assert parse_range(f"bytes={start}-{end}", total) == ByteRange(start, end)


@given(st.integers(min_value=1, max_value=10**12), st.integers(min_value=1, max_value=10**12))
def test_suffix_range_length_is_min_of_suffix_and_total(suffix, total):
    """bytes=-n yields a range of min(n, total) bytes ending at the last byte."""
    result = parse_range(f"bytes=-{suffix}", total)
    assert result.length == min(suffix, total)
    assert result.end == total - 1
