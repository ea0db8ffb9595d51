"""Which open connections a channel's current digests still admit, and the watch that acts on it."""

import pytest

from broadcaster.auth import PUBLIC, Admission, Credential
from web.revocation import CredentialWatch

KEY, NEW_KEY, TOKEN, NEW_TOKEN = "key-digest", "new-key-digest", "token-digest", "new-token-digest"

CASES = [
    # credential, listen key digest now, token digest now, reason (None: still admitted)
    (PUBLIC, None, TOKEN, None),
    (PUBLIC, KEY, TOKEN, "channel is private now: listen key required"),
    (Credential(Admission.LISTEN_KEY, KEY), KEY, NEW_TOKEN, None),
    (Credential(Admission.LISTEN_KEY, KEY), NEW_KEY, TOKEN, "listen key no longer valid"),
    (Credential(Admission.LISTEN_KEY, KEY), None, TOKEN, None),  # public again: anyone may listen
    (Credential(Admission.PRODUCER_TOKEN, TOKEN), NEW_KEY, TOKEN, None),
    (Credential(Admission.PRODUCER_TOKEN, TOKEN), KEY, NEW_TOKEN, "producer token no longer valid"),
    (Credential(Admission.PRODUCER_TOKEN, TOKEN), None, NEW_TOKEN, None),  # a listener of a public channel
    (Credential(Admission.CONSOLE, TOKEN), None, TOKEN, None),
    (Credential(Admission.CONSOLE, TOKEN), None, NEW_TOKEN, "producer token no longer valid"),
    (Credential(Admission.CONSOLE, TOKEN), KEY, None, "producer token no longer valid"),
]


@pytest.mark.parametrize(("credential", "listen_key_hash", "token_hash", "reason"), CASES)
def test_a_credential_is_refused_only_once_its_digest_no_longer_admits(credential, listen_key_hash, token_hash, reason):
    """A listener stays while the channel is public or its key or token still matches; a console needs the token."""
    assert credential.refused_by(listen_key_hash, token_hash) == reason


class Digests:
    """The database as the watch sees it: the two digests per channel, and how often they were read."""

    def __init__(self) -> None:
        self.now: dict[str, tuple[str | None, str | None]] = {}
        self.reads: list[str] = []

    async def __call__(self, channel: str) -> tuple[str | None, str | None]:
        self.reads.append(channel)
        return self.now[channel]


async def test_the_watch_stops_only_connections_whose_credential_was_revoked():
    """One read per check; the old key's connections are told why, the others are left alone."""
    digests = Digests()
    digests.now["table"] = (KEY, TOKEN)
    watch = CredentialWatch(digests, period_s=3600)
    stopped: dict[str, str] = {}
    with (
        watch.watch("table", Credential(Admission.LISTEN_KEY, KEY)) as first,
        watch.watch("table", Credential(Admission.LISTEN_KEY, KEY)) as second,
        watch.watch("table", Credential(Admission.CONSOLE, TOKEN)) as console,
    ):
        for name, watched in (("first", first), ("second", second), ("console", console)):
            watched.on_revoke(lambda reason, name=name: stopped.setdefault(name, reason))
        await watch.check("table")
        assert stopped == {}
        digests.now["table"] = (NEW_KEY, TOKEN)
        await watch.check("table")
        assert stopped == {"first": "listen key no longer valid", "second": "listen key no longer valid"}
        assert digests.reads == ["table", "table"] and watch.watching("table") == 1
    assert watch.watching("table") == 0
    await watch.close()


async def test_a_connection_revoked_before_it_says_how_to_stop_is_stopped_at_once():
    """on_revoke after the revocation calls the stop right away, with the reason."""
    digests = Digests()
    digests.now["table"] = (KEY, TOKEN)
    watch = CredentialWatch(digests, period_s=3600)
    with watch.watch("table", PUBLIC) as watched:
        await watch.check("table")
        reasons: list[str] = []
        watched.on_revoke(reasons.append)
        assert reasons == ["channel is private now: listen key required"]
    await watch.close()


async def test_a_failed_read_cuts_nobody_off():
    """If the digests cannot be read, every connection stays until the next check."""

    async def unavailable(channel: str) -> tuple[str | None, str | None]:
        raise OSError("database is locked")

    watch = CredentialWatch(unavailable, period_s=3600)
    with watch.watch("table", PUBLIC) as watched:
        await watch.check("table")
        assert watched.reason is None and watch.watching("table") == 1
    await watch.close()
