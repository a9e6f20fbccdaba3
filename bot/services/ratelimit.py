"""Per-user and per-channel rate limits (token buckets counted in images).

A flood from one member or one channel must not take the model away from
everyone else, and must not grow memory: buckets that have refilled completely
carry no information and are dropped, so at most `max_keys` are ever kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.services import metrics
from wakeru.config import LimitsSection


class TokenBuckets:
    def __init__(
        self, per_minute: float, burst: int, *, max_keys: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # key → (tokens, when)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _tokens(self, key: int, now: float) -> float:
        tokens, when = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - when) * self.rate)

    def wait_for(self, key: int, n: int) -> float:
        """Seconds until `n` images may go (0 = now). `n` above the burst counts as the burst."""
        if not self.enabled:
            return 0.0
        missing = min(n, self.burst) - self._tokens(key, self._clock())
        return max(0.0, missing / self.rate)

    def take(self, key: int, n: int) -> None:
        if not self.enabled:
            return
        now = self._clock()
        self._buckets[key] = (max(0.0, self._tokens(key, now) - min(n, self.burst)), now)
        if len(self._buckets) > self.max_keys:
            self._prune(now)

    def _prune(self, now: float) -> None:
        full = [k for k in self._buckets if self._tokens(k, now) >= self.burst]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) > self.max_keys:  # still too many: forget the oldest (most refilled)
            del self._buckets[min(self._buckets, key=lambda k: self._buckets[k][1])]

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class Refusal:
    scope: str  # "user" | "channel"
    retry_after: float  # seconds
    per_minute: float


class RateLimiter:
    def __init__(self, limits: LimitsSection):
        self.users = TokenBuckets(limits.user_per_minute, limits.user_burst)
        self.channels = TokenBuckets(limits.channel_per_minute, limits.channel_burst)
        # auto-classify tells a flooding user once per window, then stays quiet
        self._told: dict[tuple[int, int], float] = {}

    def check(self, user_id: int, channel_id: int, images: int) -> Refusal | None:
        """Take `images` from both buckets, or neither and say why."""
        for scope, buckets, key in (("user", self.users, user_id), ("channel", self.channels, channel_id)):
            wait = buckets.wait_for(key, images)
            if wait > 0:
                metrics.RATE_LIMITED.labels(scope).inc(images)
                return Refusal(scope, wait, buckets.rate * 60)
        self.users.take(user_id, images)
        self.channels.take(channel_id, images)
        return None

    def should_tell(self, user_id: int, channel_id: int, refusal: Refusal, now: float | None = None) -> bool:
        """True the first time in a refusal window: the reply itself must not become a flood."""
        now = time.monotonic() if now is None else now
        # a channel over its limit is one problem, however many members post: one note for it
        key = (user_id if refusal.scope == "user" else 0, channel_id)
        if self._told.get(key, 0.0) > now:
            return False
        if len(self._told) > 10_000:
            self._told = {k: v for k, v in self._told.items() if v > now}
        self._told[key] = now + max(refusal.retry_after, 10.0)
        return True
