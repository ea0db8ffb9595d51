"""What the batched logs share: rows queued in memory, written together within `FLUSH_S` of the first."""

import asyncio

FLUSH_S = 0.2


class BatchedLog:
    def __init__(self, name: str):
        self.name = name
        self._flusher: asyncio.Task | None = None
        self._shut = False

    def _flush_soon(self) -> None:
        # After close nothing is written: the engine is disposed, and a write then would open a
        # connection that nothing closes. A departure seen at shutdown is closed by the next start.
        if self._flusher is None and not self._shut:
            self._flusher = asyncio.create_task(self._flush_later(), name=f"{self.name}-flush")

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_S)
        self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Write what is queued; nothing is written later."""
        self._shut = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self.flush()
