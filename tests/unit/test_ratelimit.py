"""Token buckets, with time stepped by hand."""

from broadcaster.core.ratelimit import KeyedLimiter, TokenBucket


def test_a_burst_passes_then_the_rate_applies():
    bucket = TokenBucket(rate_per_s=2, burst=3)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == 500  # one token every 500 ms
    assert bucket.take(250) == 250
    assert bucket.take(500) == 0
    assert bucket.take(500) == 500


def test_refill_never_exceeds_the_burst_and_time_going_back_is_ignored():
    bucket = TokenBucket(rate_per_s=10, burst=2)
    bucket.take(0)
    assert bucket.full(60_000)
    assert [bucket.take(60_000) for _ in range(3)] == [0, 0, 100]
    assert bucket.take(59_000) == 100  # a clock step backwards grants nothing


def test_a_zero_rate_never_refills():
    bucket = TokenBucket(rate_per_s=0, burst=1)
    assert bucket.take(0) == 0
    assert bucket.take(10**9) >= 2**31 - 1


def test_keys_have_their_own_buckets_and_idle_ones_are_forgotten():
    limiter = KeyedLimiter(rate_per_s=1, burst=1, max_keys=2)
    assert limiter.take("a", 0) == 0
    assert limiter.take("a", 0) == 1000
    assert limiter.take("b", 0) == 0
    assert limiter.take("c", 5_000) == 0  # a and b have refilled: forgotten to make room
    assert set(limiter.buckets) == {"c"}


def test_when_every_key_is_busy_the_oldest_is_evicted():
    limiter = KeyedLimiter(rate_per_s=1, burst=1, max_keys=2)
    limiter.take("a", 0)
    limiter.take("b", 0)
    limiter.take("c", 0)
    assert len(limiter.buckets) <= 2 and "c" in limiter.buckets
