"""Local rate limits (RateLimitPolicy): token buckets per target, optionally one per source
principal, with per-principal overrides. Each waypoint replica counts on its own (like
Envoy's local_ratelimit that Istio uses), so N replicas admit up to N times the limit.

Refusals are 429 with `retry-after` (whole seconds until a token is back) and the IETF
draft-ietf-httpapi-ratelimit-headers fields: `RateLimit-Policy: "<name>";q=<quota>;w=<window>`
and `RateLimit: "<name>";r=<remaining>;t=<seconds to reset>`; admitted responses carry the
same two fields so a client can pace itself.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from meshcore.resources.policies import RateLimit, RateLimitPolicySpec

MAX_BUCKETS = 10_000   # per policy; the least recently used full bucket goes first


class TokenBucket:
    def __init__(self, limit: RateLimit, now: float):
        self.limit = limit
        self.tokens = float(limit.capacity)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.limit.capacity, self.tokens + (now - self.stamp) * self.limit.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until one whole token is back."""
        return max(0.0, (1 - self.tokens) / self.limit.rate)

    def reset(self) -> float:
        """Seconds until the bucket is full again (the draft's `t`)."""
        return max(0.0, (self.limit.capacity - self.tokens) / self.limit.rate)

    @property
    def full(self) -> bool:
        return self.tokens >= self.limit.capacity


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    headers: tuple[tuple[str, str], ...]
    status: int = 200
    body: str = ""


class RateLimiter:
    """One RateLimitPolicy at one waypoint replica."""

    def __init__(self, name: str, spec: RateLimitPolicySpec, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.spec = spec
        self.clock = clock
        self.overrides = {o.principal: o.limit for o in spec.overrides}
        self.buckets: OrderedDict[str | None, TokenBucket] = OrderedDict()
        self.rejected = 0

    def _key(self, principal: str | None) -> tuple[str | None, RateLimit]:
        if principal is not None and principal in self.overrides:
            return principal, self.overrides[principal]
        return (principal if self.spec.key == "SourcePrincipal" else None), self.spec.limit

    def _bucket(self, key, limit: RateLimit, now: float) -> TokenBucket:
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) >= MAX_BUCKETS:
                for k, old in list(self.buckets.items()):
                    old._refill(now)
                    if old.full:   # a full bucket carries no state worth keeping
                        del self.buckets[k]
                        break
                else:
                    self.buckets.popitem(last=False)
            b = self.buckets[key] = TokenBucket(limit, now)
        self.buckets.move_to_end(key)
        return b

    def check(self, principal: str | None) -> Verdict:
        now = self.clock()
        key, limit = self._key(principal)
        bucket = self._bucket(key, limit, now)
        ok = bucket.take(now)
        policy = f'"{self.name}";q={limit.requests_per_unit};w={limit.window}'
        state = f'"{self.name}";r={int(bucket.tokens)};t={math.ceil(bucket.reset())}'
        headers = (("ratelimit-policy", policy), ("ratelimit", state))
        if ok:
            return Verdict(True, headers)
        self.rejected += 1
        retry_after = max(1, math.ceil(bucket.wait()))
        who = f" for {principal}" if key is not None else ""
        return Verdict(False, (("retry-after", str(retry_after)),) + headers, 429,
                       f"rate limited by RateLimitPolicy {self.name}{who}: {limit.requests_per_unit} requests "
                       f"per {limit.unit.lower()}, burst {limit.capacity}; retry in {retry_after}s")
