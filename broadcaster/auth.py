"""Producer tokens and listen keys: random, shown once, stored only as a SHA-256 digest, compared in constant time;
and the credential an open connection was admitted with, which stops admitting it once its digest is replaced."""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

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


class Admission(StrEnum):
    """What let a connection in."""

    PUBLIC = "public"  # the channel had no listen key
    LISTEN_KEY = "listen_key"
    PRODUCER_TOKEN = "producer_token"  # a listener that showed the producer token instead of the key
    CONSOLE = "console"  # a producer's console: only the producer token admits it


@dataclass(frozen=True, slots=True)
class Credential:
    """The credential a long-lived connection was admitted with: its kind and the digest it matched."""

    admission: Admission
    digest: str | None = None

    def refused_by(self, listen_key_hash: str | None, token_hash: str | None) -> str | None:
        """Why the channel's current digests no longer admit this connection; None while they still do.
        A listener is admitted by a public channel, its listen key or its producer token; a console
        only by the producer token."""
        if self.admission in (Admission.CONSOLE, Admission.PRODUCER_TOKEN):
            if self.digest == token_hash or (self.admission is Admission.PRODUCER_TOKEN and listen_key_hash is None):
                return None
            return "producer token no longer valid"
        if listen_key_hash is None or self.digest == listen_key_hash:
            return None
        if self.admission is Admission.PUBLIC:
            return "channel is private now: listen key required"
        return "listen key no longer valid"


PUBLIC = Credential(Admission.PUBLIC)
