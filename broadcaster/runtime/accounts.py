"""Channels made and deleted, and their credentials: the producer token that lets one write, the optional listen key that
makes a channel private. Both are random, shown once, stored as SHA-256 digests and compared
in constant time; the server re-reads them so a key the CLI replaced stops working promptly."""

import asyncio
import time
from dataclasses import dataclass

from broadcaster.auth import (
    PUBLIC,
    Admission,
    Credential,
    hash_token,
    new_listen_key,
    new_token,
    token_matches,
    valid_channel_name,
)
from broadcaster.errors import BadInput, NotFound, Unauthorized
from db.audio_store import AudioStore
from db.store import Store

from .clock import Clock, wall_clock_ms

LISTEN_KEY_TTL_S = 2.0  # how long a channel's listen-key digest is trusted before re-reading it


@dataclass(frozen=True)
class NewChannel:
    name: str
    token: str
    listen_key: str | None = None


async def create_channel(
    store: Store, name: str, clock: Clock = wall_clock_ms, style: str = "campaign", private: bool = False
) -> NewChannel:
    """A new channel: "campaign" (narration) or "radio" (the auto-DJ fills silence from the music folder).
    A private one gets a listen key that listeners need besides the link."""
    if not valid_channel_name(name):
        raise BadInput(f"expected a channel name of lowercase letters, digits, '-' or '_' (max 64), got {name!r}")
    if style not in ("campaign", "radio"):
        raise BadInput(f"expected a channel style 'campaign' or 'radio', got {style!r}")
    token, key = new_token(), new_listen_key() if private else None
    await store.create_channel(name, hash_token(token), clock(), style, hash_token(key) if key else None)
    return NewChannel(name, token, key)


async def new_producer_token(store: Store, name: str) -> str:
    """Replace a channel's producer token (the old one stops working at once); returns the new one."""
    token = new_token()
    if not await store.set_token_hash(name, hash_token(token)):
        raise NotFound(f"no channel named {name!r}")
    return token


async def delete_channel(store: Store, audio: AudioStore, name: str) -> tuple[int, int]:
    """Delete a channel, its rows, then its audio (rows first, as the cleanup does: a crash between
    leaves orphaned bytes for the next sweep, never a row without its audio). Returns how many
    requests and bed tracks went, and the bytes freed. Only with every server stopped (the CLI checks)."""
    ids = await store.delete_channel(name)
    if ids is None:
        raise NotFound(f"no channel named {name!r}")
    freed = 0
    for request_id in ids:
        freed += await audio.delete_request(request_id)
    return len(ids), freed


async def set_listen_key(store: Store, name: str, private: bool) -> str | None:
    """Make a channel private with a fresh listen key (replacing any old one), or public again."""
    key = new_listen_key() if private else None
    if not await store.set_listen_key_hash(name, hash_token(key) if key else None):
        raise NotFound(f"no channel named {name!r}")
    return key


class ListenKeyRequired(Unauthorized):
    code = "listen_key_required"


class Gate:
    """Checks credentials against the database."""

    def __init__(self, store: Store):
        self.store = store
        self._keys: dict[str, tuple[str | None, float]] = {}
        self._reading: dict[str, asyncio.Future[str | None]] = {}

    async def check_token(self, name: str, token: str | None) -> str:
        """The stored digest `token` matches; Unauthorized if it is missing or not the channel's token."""
        if not token:
            raise Unauthorized("expected 'Authorization: Bearer <producer token>', got no token")
        digest = await self._token_digest(name, token)
        if digest is None:
            raise Unauthorized(f"the producer token is not valid for channel {name!r}")
        return digest

    async def _token_digest(self, name: str, token: str) -> str | None:
        # Read every time: producer writes are rare, and a replaced token must stop working at once.
        token_hash = await self.store.token_hash(name)
        return token_hash if token_hash is not None and token_matches(token, token_hash) else None

    async def check_listener(self, name: str, key: str | None, token: str | None) -> Credential:
        """Public channels pass; a private one needs its listen key or its producer token.
        Returns what admitted the listener, so an open connection can be checked again later."""
        required = await self._listen_key_hash(name)
        if required is None:
            return PUBLIC
        if key and token_matches(key, required):
            return Credential(Admission.LISTEN_KEY, required)
        if token and (digest := await self._token_digest(name, token)):
            return Credential(Admission.PRODUCER_TOKEN, digest)
        if not key and not token:
            raise ListenKeyRequired(
                f"channel {name!r} is private: expected its listen key as ?key=<key> "
                "(the link its producer shares carries it), got none"
            )
        raise ListenKeyRequired(
            f"the listen key is not valid for channel {name!r}; ask its producer for the current link"
        )

    async def current(self, name: str) -> tuple[str | None, str | None]:
        """The channel's listen-key and producer-token digests, read now (one read; it refreshes the cache)."""
        row = await self.store.channel(name)
        if row is None:
            return None, None
        self._keys[name] = (row.listen_key_hash, time.monotonic())
        return row.listen_key_hash, row.token_hash

    async def _listen_key_hash(self, name: str) -> str | None:
        """Cached briefly: every chunk fetch of every listener asks. When the cache is stale, one
        read serves every request that asks meanwhile (a thousand fetches come at once)."""
        cached = self._keys.get(name)
        if cached is not None and time.monotonic() - cached[1] < LISTEN_KEY_TTL_S:
            return cached[0]
        reading = self._reading.get(name)
        if reading is None:
            reading = self._reading[name] = asyncio.ensure_future(self._read_listen_key_hash(name))
            reading.add_done_callback(lambda _: self._reading.pop(name, None))
        return await asyncio.shield(reading)  # one request leaving does not cancel the others' read

    async def _read_listen_key_hash(self, name: str) -> str | None:
        try:
            row = await self.store.channel(name)
        except Exception:
            if name in self._keys:  # the database is away: the last key known still admits its listeners
                return self._keys[name][0]
            raise
        if row is None:  # no such channel: its caller answers 404; nothing kept for a made-up name
            return None
        self._keys[name] = (row.listen_key_hash, time.monotonic())
        return row.listen_key_hash
