"""Token buckets: a sustained rate with room for a burst. Pure; the caller passes the time."""

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: int
    tokens: float = field(init=False)
    updated_ms: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now_ms: int) -> int:
        """Spend one token if there is one and return 0; otherwise return the ms until there is one."""
        self._refill(now_ms)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        if self.rate_per_s <= 0:
            return 2**31  # a zero rate never refills
        return max(1, int((1 - self.tokens) * 1000 / self.rate_per_s + 0.999))

    def full(self, now_ms: int) -> bool:
        self._refill(now_ms)
        return self.tokens >= self.burst

    def _refill(self, now_ms: int) -> None:
        if self.updated_ms is not None and now_ms > self.updated_ms:
            self.tokens = min(float(self.burst), self.tokens + (now_ms - self.updated_ms) * self.rate_per_s / 1000)
        self.updated_ms = now_ms if self.updated_ms is None else max(self.updated_ms, now_ms)


class KeyedLimiter:
    """One bucket per key (a client address, say), forgetting keys whose bucket has refilled,
    so a scan from many addresses cannot grow memory without bound."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 10_000):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.buckets: dict[object, TokenBucket] = {}

    def take(self, key: object, now_ms: int) -> int:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self._forget_idle(now_ms)
            bucket = self.buckets[key] = TokenBucket(self.rate_per_s, self.burst)
        return bucket.take(now_ms)

    def _forget_idle(self, now_ms: int) -> None:
        self.buckets = {k: b for k, b in self.buckets.items() if not b.full(now_ms)}
        while len(self.buckets) >= self.max_keys:  # all busy: evict the oldest-inserted
            del self.buckets[next(iter(self.buckets))]
