"""Parse HTTP Range headers (RFC 9110 §14) into a single inclusive byte range.

Only single `bytes` ranges are honoured. Anything we may legally ignore (no header,
another unit, several ranges) yields None, meaning "serve the whole resource with 200".
"""

import re
from dataclasses import dataclass

from broadcaster.errors import BadInput

MAX_HEADER_LENGTH = 200  # real clients send a few dozen chars; longer is abuse
_EXPECTED = "expected a Range like 'bytes=0-499'"
# RFC 9110 token characters, spelled out so that no non-ASCII letter slips in.
_UNIT = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# [0-9] rather than \d: \d also matches e.g. Arabic-Indic digits. No nested
# quantifiers, fullmatch only, and a length cap: no catastrophic backtracking.
_SPEC = re.compile(r"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")


class MalformedRange(BadInput):
    status = 400
    code = "malformed_range"


class RangeNotSatisfiable(BadInput):
    status = 416
    code = "range_not_satisfiable"


@dataclass(frozen=True)
class ByteRange:
    start: int  # inclusive
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, total: int) -> str:
        return f"bytes {self.start}-{self.end}/{total}"


def _parse_spec(spec: str, header: str) -> tuple[int | None, int | None]:
    """Split one `first-last` spec; None marks an omitted side."""
    match = _SPEC.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "":
        raise MalformedRange(f"{_EXPECTED}, got {header!r}")
    first, last = (int(g) if g else None for g in match.groups())
    if first is not None and last is not None and last < first:
        raise MalformedRange(f"{_EXPECTED} with start <= end, got {header!r}")
    return first, last


def parse_range(header: str | None, total: int) -> ByteRange | None:
    """Parse an HTTP Range header (RFC 9110 bytes ranges) against a resource of `total` bytes.
    None means serve the whole resource (no header, or a header we may legally ignore)."""
    if header is None:
        return None
    if len(header) > MAX_HEADER_LENGTH:
        raise MalformedRange(f"{_EXPECTED}, got a {len(header)}-character header")
    unit, equals, range_set = header.partition("=")
    unit = unit.strip(" \t")
    if not equals or not _UNIT.fullmatch(unit):
        raise MalformedRange(f"{_EXPECTED}, got {header!r}")
    if unit.lower() != "bytes":
        return None  # RFC 9110: a server ignores range units it does not know
    # RFC 9110 list rule: recipients must tolerate empty elements such as "0-1,".
    specs = [_parse_spec(part, header) for part in range_set.split(",") if part.strip(" \t")]
    if not specs:
        raise MalformedRange(f"{_EXPECTED}, got {header!r}")
    if len(specs) > 1:
        return None  # legal to ignore; multipart/byteranges is not worth serving
    first, last = specs[0]
    if first is None:  # suffix form: the last `last` bytes
        if last == 0 or total == 0:
            raise RangeNotSatisfiable(f"range {header!r} selects no bytes of the {total}-byte resource")
        return ByteRange(max(total - last, 0), total - 1)
    if first >= total:
        raise RangeNotSatisfiable(f"range {header!r} starts beyond the end of the {total}-byte resource")
    return ByteRange(first, total - 1 if last is None else min(last, total - 1))
