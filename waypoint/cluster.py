"""One backend Service as the waypoint sees it (pure): its TrafficPolicy's pieces together,
so the proxy asks one object where to send a request and tells it how that went.

    c = Cluster("default/web", choice.spec, clock)      # choice: policies.traffic_policy(...)
    ep = c.pick(endpoints)                              # load balancing over endpoints not ejected
    c.started(ep) ... c.finished(ep, status=503)        # or connect_failure=True
    c.dump(endpoints)                                   # for the admin /clusters view

A new TrafficPolicy replaces the pieces it changes and keeps the others (and their state).
"""
from __future__ import annotations

import random
import time
from typing import Callable, Hashable, Sequence

from meshcore.resources.policies import TrafficPolicySpec

from .filters.budget import Budget
from .filters.lb import Balancer
from .filters.outlier import OutlierDetector
from .filters.pool import PoolLimits


class Cluster:
    def __init__(self, service: str, spec: TrafficPolicySpec, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, policy_name: str | None = None):
        self.service = service
        self.clock = clock
        self.rng = rng or random.Random()
        self.spec: TrafficPolicySpec | None = None
        self.update(spec, policy_name)

    def update(self, spec: TrafficPolicySpec, policy_name: str | None = None) -> None:
        old = self.spec
        if old is None or old.retry_budget != spec.retry_budget:
            self.budget = Budget(spec.retry_budget, self.clock)
        if old is None or old.load_balancer != spec.load_balancer:
            self.balancer = Balancer(spec.load_balancer, self.rng)
        if old is None or old.connection_pool != spec.connection_pool:
            self.pool = PoolLimits(self.service, spec.connection_pool, policy_name or "")
        if old is None or old.outlier_detection != spec.outlier_detection:
            od = spec.outlier_detection
            self.outliers = OutlierDetector(od, self.clock) if od is not None else None
        self.spec = spec

    def pick(self, endpoints: Sequence[Hashable]) -> Hashable:
        live = self.outliers.available(endpoints) if self.outliers else list(endpoints)
        return self.balancer.pick(live)

    def started(self, ep: Hashable) -> None:
        self.balancer.start(ep)

    def finished(self, ep: Hashable, status: int | None = None, connect_failure: bool = False,
                 pool: Sequence[Hashable] = ()) -> bool:
        """The attempt on `ep` ended; True if that got `ep` ejected."""
        self.balancer.finish(ep)
        if self.outliers is None:
            return False
        return self.outliers.record(ep, status, connect_failure, pool)

    def dump(self, endpoints: Sequence[Hashable]) -> dict:
        return {"service": self.service, "load_balancer": self.spec.load_balancer,
                "in_flight": self.pool.active, "pending": len(self.pool.pending), "overflows": self.pool.overflows,
                "retry_budget": {"allowance": round(self.budget.allowance(), 1), "refused": self.budget.refused},
                "endpoints": {str(ep): dict(self.outliers.state(ep) if self.outliers else {"ejected": False},
                                            active=self.balancer.active.get(ep, 0)) for ep in endpoints}}
