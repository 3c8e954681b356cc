"""Load balancing over a Service's endpoints (TrafficPolicy `loadBalancer.simple`): ROUND_ROBIN,
or LEAST_REQUEST as Envoy does it (power of two choices: two random endpoints, the one with
fewer requests in flight wins). Ejected endpoints are skipped by passing `available` from the
outlier detector. Callers report `start`/`finish` around each upstream request."""
from __future__ import annotations

import random
from collections import Counter
from typing import Hashable, Sequence


class Balancer:
    def __init__(self, algorithm: str = "ROUND_ROBIN", rng: random.Random | None = None):
        if algorithm not in ("ROUND_ROBIN", "LEAST_REQUEST"):
            raise ValueError(f"unknown load-balancing algorithm {algorithm!r}")
        self.algorithm = algorithm
        self.rng = rng or random.Random()
        self.active: Counter = Counter()
        self._next = 0

    def pick(self, endpoints: Sequence[Hashable]) -> Hashable:
        if not endpoints:
            raise LookupError("no endpoints to choose from")
        if self.algorithm == "ROUND_ROBIN" or len(endpoints) == 1:
            ep = endpoints[self._next % len(endpoints)]
            self._next += 1
            return ep
        a, b = self.rng.sample(range(len(endpoints)), 2)
        ea, eb = endpoints[a], endpoints[b]
        return ea if self.active[ea] <= self.active[eb] else eb

    def start(self, ep: Hashable) -> None:
        active = self.active
        active[ep] = active.get(ep, 0) + 1

    def finish(self, ep: Hashable) -> None:
        # one lookup and one store (an Endpoint's hash is computed from all its fields each time)
        active = self.active
        n = active.get(ep, 0) - 1
        if n <= 0:
            active.pop(ep, None)
        else:
            active[ep] = n
