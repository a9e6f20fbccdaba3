"""Token buckets for the per-member and per-channel limits, on a fake clock."""

from __future__ import annotations

import pytest

from bot.services.ratelimit import RateLimiter, TokenBuckets
from wakeru.config import LimitsSection


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_the_burst_then_refills_at_the_rate():
    clock = Clock()
    b = TokenBuckets(per_minute=6, burst=3, clock=clock)  # one image every 10 s
    for _ in range(3):
        assert b.wait_for(1, 1) == 0
        b.take(1, 1)
    assert b.wait_for(1, 1) == pytest.approx(10.0)
    clock.now += 5
    assert b.wait_for(1, 1) == pytest.approx(5.0)
    clock.now += 5
    assert b.wait_for(1, 1) == 0
    assert b.wait_for(2, 3) == 0  # another key has its own bucket


def test_more_images_than_the_burst_count_as_the_burst_and_zero_rate_is_off():
    clock = Clock()
    b = TokenBuckets(per_minute=60, burst=4, clock=clock)
    assert b.wait_for(1, 10) == 0  # a 10-image post from a full bucket goes, and empties it
    b.take(1, 10)
    assert b.wait_for(1, 1) == pytest.approx(1.0)
    off = TokenBuckets(per_minute=0, burst=1, clock=clock)
    for _ in range(100):
        assert off.wait_for(1, 5) == 0
        off.take(1, 5)
    assert len(off) == 0


def test_memory_is_bounded_by_dropping_full_buckets_first():
    clock = Clock()
    b = TokenBuckets(per_minute=60, burst=2, max_keys=100, clock=clock)
    for key in range(1000):
        b.take(key, 1)
        clock.now += 0.01
    assert len(b) <= 101
    clock.now += 10  # every bucket refilled: they carry no information
    b.take(5000, 1)
    assert len(b) == 1


def test_the_limiter_takes_from_both_buckets_or_neither():
    limiter = RateLimiter(LimitsSection(user_per_minute=60, user_burst=2, channel_per_minute=60, channel_burst=3))
    assert limiter.check(1, 100, 2) is None
    refused = limiter.check(1, 100, 1)
    assert refused.scope == "user" and refused.retry_after > 0 and refused.per_minute == 60
    # the refused request took nothing from the channel: one place is left there
    assert limiter.check(2, 100, 1) is None
    refused = limiter.check(3, 100, 1)
    assert refused.scope == "channel"


def test_a_flooding_member_is_told_once_per_window():
    limiter = RateLimiter(LimitsSection(user_per_minute=6, user_burst=1))
    limiter.check(1, 100, 1)
    refusal = limiter.check(1, 100, 1)
    assert limiter.should_tell(1, 100, refusal, now=0.0)
    assert not limiter.should_tell(1, 100, refusal, now=5.0)
    assert limiter.should_tell(1, 100, refusal, now=11.0)


def test_a_channel_over_its_limit_gets_one_note_whoever_posts():
    limiter = RateLimiter(LimitsSection(user_per_minute=0, channel_per_minute=6, channel_burst=1))
    assert limiter.check(1, 100, 1) is None
    first, second = limiter.check(2, 100, 1), limiter.check(3, 100, 1)
    assert first.scope == second.scope == "channel"
    assert limiter.should_tell(2, 100, first, now=0.0)
    assert not limiter.should_tell(3, 100, second, now=1.0)
