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
ceiling: it grows with a large or slow audience and falls as the needs do,
down to the floor for a few listeners close by, so a narration is heard sooner.
An audience nothing is known of yet gets the configured starting lead plus
START_MS_PER_LISTENER for each of its listeners (the least of its band): with
the starting lead alone, half of a thousand listeners had the first sentence
of their first narration only after it began (bench/lead.py).

How long a burst of fetches takes depends on how many fetch at once, so each
need is kept with the size of the audience its chunk was placed for, and the
lead for an audience counts only needs measured with one of about its size
(its power of two, or the one either side: 256-2047 listeners for 1000). A crowd
that leaves takes its needs with it, and an office radio that speaks once an
hour to the same thousand listeners keeps its lead from the last time.
"""

import math
from collections import OrderedDict, deque
from itertools import chain

QUANTILE = 0.95  # of recent needs: the slowest few listeners of a large audience may still join late
MARGIN_MS = 150  # on top of that quantile: decoding, the clock estimate, jitter
KEEP_SAMPLES = 2000  # the recent needs, at most, over all audience sizes
SAMPLE_AGE_MS = 6 * 3_600_000  # older needs are forgotten: the network or the machine may have changed
KEEP_CHUNKS = 256  # placement times remembered; acknowledgements arrive as each chunk ends
# An audience not yet measured: a thousand listeners fetching one chunk at once had it within
# 510-590 ms of its announcement (bench/memory.py, one process), against 60-90 ms for eight.
START_MS_PER_LISTENER = 1


def band(audience: int) -> int:
    """Audiences of the same power of two share a band: 1, 2-3, 4-7, ..., 512-1023, ..."""
    return max(audience, 1).bit_length()


class LeadTuner:
    def __init__(self, floor_ms: int, ceiling_ms: int, start_ms: int | None = None):
        """`start_ms`: the lead while no listener of about the audience's size has reported (the floor if None)."""
        start_ms = floor_ms if start_ms is None else start_ms
        if not 0 <= floor_ms <= start_ms <= ceiling_ms:
            raise ValueError(
                f"expected 0 <= floor <= start <= ceiling for the lead, got {floor_ms}, {start_ms} and {ceiling_ms} ms"
            )
        self.floor_ms = floor_ms
        self.ceiling_ms = ceiling_ms
        self.start_ms = start_ms
        self._placed: OrderedDict[str, tuple[int, int]] = OrderedDict()  # chunk id -> (placed at, its band)
        # The needs in arrival order, to forget the oldest, and sorted by band, for the quantile.
        self._needs: deque[tuple[int, int, int]] = deque()  # (reported at, band, need) in ms
        self._bands: dict[int, list[int]] = {}
        self._leads: dict[int, int] = {}  # band -> lead, until the needs change

    def placed(self, chunk_id: str, now_ms: int, starts_at_ms: int, audience: int) -> None:
        """The chunk was put on the timeline, and so announced, at `now_ms`, for `audience` listeners.
        Only a chunk placed within the lead is remembered: one placed further ahead had time to
        spare, and how long its audio took to reach listeners (queued behind the fetches of later
        sentences) is not what the lead must cover."""
        if starts_at_ms - now_ms > self.lead_ms(now_ms, audience):
            return
        self._placed[chunk_id] = (now_ms, band(audience))
        self._placed.move_to_end(chunk_id)
        while len(self._placed) > KEEP_CHUNKS:
            self._placed.popitem(last=False)

    def ready(self, chunk_id: str, ready_at_ms: int, now_ms: int) -> int | None:
        """A listener had the chunk's audio ready at `ready_at_ms`; the lead it needed, or None for a
        chunk not placed here lately (placed before a restart, long ago, or well ahead)."""
        placed = self._placed.get(chunk_id)
        if placed is None:
            return None
        placed_ms, placed_band = placed
        need_ms = min(max(ready_at_ms - placed_ms, 0), self.ceiling_ms)  # one wild report moves it at most this far
        if len(self._needs) == KEEP_SAMPLES:
            self._forget_oldest()
        self._needs.append((now_ms, placed_band, need_ms))
        self._bands.setdefault(placed_band, []).append(need_ms)
        self._leads.clear()
        return need_ms

    def lead_ms(self, now_ms: int, audience: int) -> int:
        """The lead for audio placed now for `audience` listeners."""
        while self._needs and self._needs[0][0] < now_ms - SAMPLE_AGE_MS:
            self._forget_oldest()
        wanted = band(audience)
        lead = self._leads.get(wanted)
        if lead is None:
            lead = self._leads[wanted] = self._from(wanted)
        return lead

    def _from(self, wanted: int) -> int:
        ranked = sorted(chain.from_iterable(self._bands.get(b, ()) for b in (wanted - 1, wanted, wanted + 1)))
        if not ranked:
            return min(self.start_ms + START_MS_PER_LISTENER * (1 << (wanted - 1)), self.ceiling_ms)
        quantile = ranked[math.ceil(QUANTILE * len(ranked)) - 1]
        return min(max(quantile + MARGIN_MS, self.floor_ms), self.ceiling_ms)

    def _forget_oldest(self) -> None:
        _, old_band, need_ms = self._needs.popleft()
        self._bands[old_band].remove(need_ms)  # the oldest of its value: any one of them will do
        self._leads.clear()
