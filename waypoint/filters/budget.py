"""The retry budget, on by default for every Service behind a waypoint (TrafficPolicy
`retryBudget`, default 20% and 3 retries/s over a 10 s window: Envoy's retry_budget numbers,
counted over recent requests as Linkerd and Finagle do rather than over requests in flight,
so that a burst of failures cannot multiply the load on a backend that is already down).

A retry is allowed while  retries(window) < percent/100 * requests(window) + floor * ttl.
The window is a ring of one-second buckets, so memory is fixed whatever the rate.
"""
from __future__ import annotations

import math
import time
from typing import Callable

from meshcore.resources.policies import RetryBudget


class Budget:
    def __init__(self, spec: RetryBudget = RetryBudget(), clock: Callable[[], float] = time.monotonic):
        self.spec = spec
        self.clock = clock
        self.slots = max(1, math.ceil(spec.ttl))
        self._requests = [0] * self.slots
        self._retries = [0] * self.slots
        self._stamp = [None] * self.slots   # which second each slot currently counts
        self.refused = 0

    def _slot(self) -> int:
        second = math.floor(self.clock())
        i = second % self.slots
        if self._stamp[i] != second:
            self._stamp[i], self._requests[i], self._retries[i] = second, 0, 0
        return i

    def _window(self) -> tuple[int, int]:
        now = math.floor(self.clock())
        live = [i for i, s in enumerate(self._stamp) if s is not None and now - s < self.slots]
        return sum(self._requests[i] for i in live), sum(self._retries[i] for i in live)

    def record_request(self) -> None:
        """Every original request (not its retries) deposits into the budget."""
        self._requests[self._slot()] += 1

    def allowance(self) -> float:
        requests, _ = self._window()
        return self.spec.percent / 100 * requests + self.spec.min_retries_per_second * self.slots

    def try_retry(self) -> bool:
        """Withdraw one retry if the budget allows it; False means: answer with what we have."""
        requests, retries = self._window()
        if retries + 1 > self.spec.percent / 100 * requests + self.spec.min_retries_per_second * self.slots:
            self.refused += 1
            return False
        self._retries[self._slot()] += 1
        return True
