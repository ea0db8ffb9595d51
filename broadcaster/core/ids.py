"""Opaque ids for requests, chunks and connections: 16 lowercase hex digits."""

import re
import secrets

ID_PATTERN = re.compile(r"[0-9a-f]{16}")


def new_id() -> str:
    return secrets.token_hex(8)


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None
