"""Connection-pool limits (TrafficPolicy `connectionPool`, Envoy's circuit breakers as Istio
configures them): at most maxRequests in flight to a Service (HTTP/1: also at most
maxConnections, one request per connection), at most maxPendingRequests waiting for a slot;
anything beyond is refused at once with 503 and a body that says which limit and which policy.
Pure accounting: the caller acquires before sending upstream and releases when done."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from meshcore.resources.policies import ConnectionPool

ADMIT, QUEUE, REJECT = "admit", "queue", "reject"


@dataclass(frozen=True)
class Admission:
    outcome: str           # ADMIT, QUEUE (wait for `release` to hand the slot over) or REJECT
    ticket: int = 0
    body: str = ""


_ADMITTED = Admission(ADMIT)   # no limit set: the ticket is never used (only QUEUE waits on one)


class PoolLimits:
    def __init__(self, service: str, spec: ConnectionPool, policy: str = "", multiplexed: bool = False):
        self.service = service
        self.spec = spec
        self.policy = policy
        self.multiplexed = multiplexed     # HTTP/2 upstream: connections do not bound requests
        self.active = 0
        self.pending: deque[int] = deque()
        self._next = 0
        self.overflows = 0

    @property
    def _limited(self) -> bool:
        return self.spec.max_requests is not None or (self.spec.max_connections is not None and not self.multiplexed)

    @property
    def capacity(self) -> int | None:
        limits = [x for x in (self.spec.max_requests,
                              None if self.multiplexed else self.spec.max_connections) if x is not None]
        return min(limits) if limits else None

    def acquire(self) -> Admission:
        self._next += 1
        cap = self.capacity if self._limited else None
        if cap is None or (self.active < cap and not self.pending):
            self.active += 1
            return _ADMITTED if cap is None else Admission(ADMIT, self._next)
        max_pending = self.spec.max_pending_requests
        if max_pending is None or len(self.pending) < max_pending:
            self.pending.append(self._next)
            return Admission(QUEUE, self._next)
        self.overflows += 1
        by = f" (TrafficPolicy {self.policy})" if self.policy else ""
        return Admission(REJECT, body=f"upstream connection pool overflow: Service {self.service} allows {cap} "
                                      f"requests in flight and {max_pending} pending{by}, all in use")

    def release(self) -> int | None:
        """One admitted request is done. Returns the ticket of a queued request now admitted."""
        if self.pending:
            return self.pending.popleft()      # the slot passes on; active stays the same
        self.active -= 1
        return None

    def abandon(self, ticket: int) -> None:
        """A queued request gave up (client left, timeout) before it was admitted."""
        try:
            self.pending.remove(ticket)
        except ValueError:
            pass
