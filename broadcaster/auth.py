"""Producer tokens and listen keys: random, shown once, stored only as a SHA-256 digest, compared in constant time."""

import hashlib
import hmac
import re
import secrets

CHANNEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def new_token() -> str:
    # The prefix keeps a token from starting with "-" (which a command line would read as an option)
    # and makes leaked tokens easy to recognize.
    return "bc_" + secrets.token_urlsafe(24)


def new_listen_key() -> str:
    return "lk_" + secrets.token_urlsafe(18)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def valid_channel_name(name: object) -> bool:
    return isinstance(name, str) and CHANNEL_NAME.fullmatch(name) is not None
