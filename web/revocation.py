"""Open connections close once the credential that admitted them no longer would.

A WebSocket, a live.mp3 player or a progressive stream is admitted once, when it
starts. A listen key replaced or added (`channel key NAME`), or a producer token
replaced (`channel token NAME`), must also cut off those already connected with
the old one. So each long-lived connection is registered here, while it lasts,
with the credential that admitted it (web/access.py). Every `period_s`, for each
channel with open connections, the channel's two digests are read once, and
each distinct credential is tested against them (broadcaster/auth.py): the
connections holding one that no longer admits are told to stop, with the
reason. Connections are grouped by credential, so a thousand listeners who came
with the same key cost one database read and one comparison per period.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from broadcaster import logs
from broadcaster.auth import Credential

log = logging.getLogger(__name__)

Digests = Callable[[str], Awaitable[tuple[str | None, str | None]]]  # channel → listen-key and token digests


def _not_yet(reason: str) -> None:
    pass


class Watched:
    """One open connection's registration, for the duration of a `with` block: `on_revoke` says how to
    stop it. (A plain class, not a generator: one is kept per listener, thousands at once.)"""

    __slots__ = ("_stop", "_watch", "channel", "credential", "reason")

    def __init__(self, watch: "CredentialWatch", channel: str, credential: Credential):
        self._watch = watch
        self.channel = channel
        self.credential = credential
        self.reason: str | None = None  # why it was revoked, once it was
        self._stop: Callable[[str], None] = _not_yet

    def __enter__(self) -> "Watched":
        self._watch._add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._watch._forget(self)
        self._stop = _not_yet  # it may refer to the connection's objects; they need not outlive it

    def on_revoke(self, stop: Callable[[str], None]) -> None:
        """Call `stop(reason)` when the credential stops admitting; at once if it already has."""
        self._stop = stop
        if self.reason is not None:
            stop(self.reason)

    def revoke(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._stop(reason)


class CredentialWatch:
    def __init__(self, digests: Digests, period_s: float):
        self._digests = digests
        self.period_s = period_s
        self._open: dict[str, dict[Credential, set[Watched]]] = {}
        self._task: asyncio.Task | None = None
        self._closed = False

    def watch(self, channel: str, credential: Credential) -> Watched:
        """`with watch.watch(channel, credential) as watched:` keeps a connection under watch for the block."""
        return Watched(self, channel, credential)

    def _add(self, watched: Watched) -> None:
        self._open.setdefault(watched.channel, {}).setdefault(watched.credential, set()).add(watched)
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="credential-watch", context=logs.task_context())

    def watching(self, channel: str) -> int:
        """Open connections of the channel under watch."""
        return sum(len(group) for group in self._open.get(channel, {}).values())

    def _forget(self, watched: Watched) -> None:
        groups = self._open.get(watched.channel)
        if groups is None:
            return
        group = groups.get(watched.credential)
        if group is not None:
            group.discard(watched)
            if not group:
                del groups[watched.credential]
        if not groups:
            del self._open[watched.channel]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            for channel in list(self._open):
                await self.check(channel)

    async def check(self, channel: str) -> None:
        """Read the channel's digests and stop the connections whose credential they no longer admit."""
        try:
            listen_key_hash, token_hash = await self._digests(channel)
        except Exception:  # the database is away for a moment: nobody is cut off for it; try next period
            log.warning("could not re-check the credentials of %s's open connections", channel, exc_info=True)
            return
        groups = self._open.get(channel, {})
        for credential in list(groups):
            reason = credential.refused_by(listen_key_hash, token_hash)
            if reason is not None:
                revoked = groups.pop(credential)
                log.info("closing %d connection(s) to %s: %s", len(revoked), channel, reason)
                for watched in revoked:
                    watched.revoke(reason)
        if not groups:
            self._open.pop(channel, None)

    async def close(self) -> None:
        """Stop checking (at shutdown, when every connection is being closed anyway)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
