"""Outlier detection (TrafficPolicy `outlierDetection`, Envoy's and Istio's semantics): an
endpoint is ejected after `consecutive5xxErrors` 5xx answers or connect failures in a row
(or `consecutiveGatewayErrors` 502/503/504 or connect failures) for baseEjectionTime times
the number of times it has been ejected (capped at 300 s, Envoy's max_ejection_time), and
comes back when that time is over. Each `interval` an endpoint spends healthy and not ejected
lowers its multiplier by one. No more than maxEjectionPercent of the endpoints are ejected at
once, except that one may always be ejected when the percentage is above zero (as Envoy does).
Time comes from an injectable clock; nothing runs in the background: state is brought up to
date whenever it is read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable

from meshcore.resources.policies import OutlierDetection

MAX_EJECTION_TIME = 300.0
GATEWAY_ERRORS = (502, 503, 504)


@dataclass
class _Host:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejections: int = 0
    ejected_until: float | None = None
    healthy_since: float = 0.0


class OutlierDetector:
    def __init__(self, spec: OutlierDetection, clock: Callable[[], float] = time.monotonic):
        self.spec = spec
        self.clock = clock
        self.hosts: dict[Hashable, _Host] = {}
        self.ejections_total = 0

    def _host(self, ep: Hashable) -> _Host:
        h = self.hosts.get(ep)
        if h is None:
            h = self.hosts[ep] = _Host(healthy_since=self.clock())
        return h

    def _update(self, h: _Host, now: float) -> None:
        if h.ejected_until is not None and now >= h.ejected_until:
            h.ejected_until, h.healthy_since = None, h.ejected_until
        if h.ejected_until is None and h.ejections and now - h.healthy_since >= self.spec.interval:
            steps = int((now - h.healthy_since) // self.spec.interval)
            h.ejections = max(0, h.ejections - steps)
            h.healthy_since += steps * self.spec.interval

    def is_ejected(self, ep: Hashable) -> bool:
        h = self.hosts.get(ep)
        if h is None:
            return False
        self._update(h, self.clock())
        return h.ejected_until is not None

    def available(self, endpoints: Iterable[Hashable]) -> list:
        """The endpoints not ejected; all of them if every one is (Envoy's panic mode)."""
        eps = list(endpoints)
        live = [e for e in eps if not self.is_ejected(e)]
        return live or eps

    def record(self, ep: Hashable, status: int | None = None, connect_failure: bool = False,
               pool: Iterable[Hashable] = ()) -> bool:
        """One answer from `ep` (or a connect failure). `pool` is every endpoint of the
        Service, for the ejection cap. True when this answer ejected the endpoint."""
        now = self.clock()
        h = self._host(ep)
        self._update(h, now)
        five = connect_failure or (status is not None and status >= 500)
        gateway = connect_failure or status in GATEWAY_ERRORS
        h.consecutive_5xx = h.consecutive_5xx + 1 if five else 0
        h.consecutive_gateway = h.consecutive_gateway + 1 if gateway else 0
        if h.ejected_until is not None:
            return False
        tripped = ((self.spec.consecutive_5xx_errors and h.consecutive_5xx >= self.spec.consecutive_5xx_errors) or
                   (self.spec.consecutive_gateway_errors and
                    h.consecutive_gateway >= self.spec.consecutive_gateway_errors))
        if not tripped or not self._may_eject(ep, pool):
            return False
        h.ejections += 1
        h.ejected_until = now + min(self.spec.base_ejection_time * h.ejections, MAX_EJECTION_TIME)
        h.consecutive_5xx = h.consecutive_gateway = 0
        self.ejections_total += 1
        return True

    def _may_eject(self, ep: Hashable, pool: Iterable[Hashable]) -> bool:
        members = set(pool) | {ep}
        if self.spec.max_ejection_percent <= 0:
            return False
        ejected = sum(1 for e in members if self.is_ejected(e))
        if ejected == 0:
            return True
        return (ejected + 1) * 100 <= self.spec.max_ejection_percent * len(members)

    def state(self, ep: Hashable) -> dict:
        """For /clusters: the endpoint's counters and ejection."""
        h = self._host(ep)
        self._update(h, self.clock())
        left = None if h.ejected_until is None else round(h.ejected_until - self.clock(), 3)
        return {"ejected": h.ejected_until is not None, "ejected_for_s": left, "ejections": h.ejections,
                "consecutive_5xx": h.consecutive_5xx, "consecutive_gateway_errors": h.consecutive_gateway}
