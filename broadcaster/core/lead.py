"""How far ahead new audio must be announced for a channel's audience to have it in hand (pure).

A chunk placed `lead_ms` ahead of now sounds that long after listeners hear of
it; in that time each must fetch and decode it. A few listeners on a good
network need a fraction of a second, but a thousand fetching the same chunk at
once take longer, and those who get it late join it part-way through: they
miss the beginning of a sentence, usually the first of a narration, whose
chunk is the one placed at the lead (later ones are placed when ready, mostly
seconds ahead).

So listeners report, with each acknowledgement, when they had the chunk's
audio ready to play (`ready_at_ms`, by the server's clock as they estimate it).
For a chunk placed within the lead, that minus the moment it was placed is
how much lead that listener needed. The lead is the recent needs' high
quantile plus a margin, never below the configured floor nor above the
ceiling: it grows with a large or slow audience and falls back as the needs do.
"""

import math
from bisect import bisect_left, insort
from collections import OrderedDict, deque

QUANTILE = 0.95  # of recent needs: the slowest few listeners of a large audience may still join late
MARGIN_MS = 150  # on top of that quantile: decoding, the clock estimate, jitter
KEEP_SAMPLES = 1000  # the recent needs, at most: a burst of a large audience, or many chunks of a small one
SAMPLE_AGE_MS = 300_000  # needs older than this are forgotten, so a departed audience stops counting
KEEP_CHUNKS = 256  # placement times remembered; acknowledgements arrive as each chunk ends


class LeadTuner:
    def __init__(self, floor_ms: int, ceiling_ms: int):
        if not 0 <= floor_ms <= ceiling_ms:
            raise ValueError(f"expected 0 <= floor <= ceiling for the lead, got {floor_ms} and {ceiling_ms} ms")
        self.floor_ms = floor_ms
        self.ceiling_ms = ceiling_ms
        self._placed: OrderedDict[str, int] = OrderedDict()  # chunk id -> when it was placed
        # The recent needs twice: in arrival order, to forget the oldest, and sorted, for the quantile.
        # A thousand listeners report on a first sentence at once, so neither is rebuilt per report.
        self._needs: deque[tuple[int, int]] = deque()  # (reported at, need) in ms
        self._ranked: list[int] = []

    def placed(self, chunk_id: str, now_ms: int, starts_at_ms: int) -> None:
        """The chunk was put on the timeline, and so announced, at `now_ms`. Only a chunk placed
        within the lead is remembered: one placed further ahead had time to spare, and how long its
        audio took to reach listeners (queued behind the fetches of later sentences) is not what the lead
        must cover."""
        if starts_at_ms - now_ms > self.lead_ms(now_ms):
            return
        self._placed[chunk_id] = now_ms
        self._placed.move_to_end(chunk_id)
        while len(self._placed) > KEEP_CHUNKS:
            self._placed.popitem(last=False)

    def ready(self, chunk_id: str, ready_at_ms: int, now_ms: int) -> int | None:
        """A listener had the chunk's audio ready at `ready_at_ms`; the lead it needed, or None for a
        chunk not placed here lately (placed before a restart, or long ago)."""
        placed_ms = self._placed.get(chunk_id)
        if placed_ms is None:
            return None
        need_ms = min(max(ready_at_ms - placed_ms, 0), self.ceiling_ms)  # one wild report moves it at most this far
        if len(self._needs) == KEEP_SAMPLES:
            self._forget_oldest()
        self._needs.append((now_ms, need_ms))
        insort(self._ranked, need_ms)
        return need_ms

    def lead_ms(self, now_ms: int) -> int:
        """The lead for audio placed now."""
        while self._needs and self._needs[0][0] < now_ms - SAMPLE_AGE_MS:
            self._forget_oldest()
        ranked = self._ranked
        if not ranked:
            return self.floor_ms
        quantile = ranked[math.ceil(QUANTILE * len(ranked)) - 1]
        return min(max(quantile + MARGIN_MS, self.floor_ms), self.ceiling_ms)

    def _forget_oldest(self) -> None:
        _, need_ms = self._needs.popleft()
        del self._ranked[bisect_left(self._ranked, need_ms)]
