"""HTTPRoute `timeouts` as deadlines (pure): `request` bounds the whole exchange with the
client, retries and backoff included; `backendRequest` bounds each attempt. "0s" disables
either (the spec). Unset `request`: no route-level limit (Istio's default for HTTPRoute);
unset `backendRequest`: an attempt may use what is left of `request`.
When `request` runs out the answer is 504 at once; an attempt that runs out of
`backendRequest` is abandoned and, with a retry stanza, retried (GEP-1731)."""
from __future__ import annotations

from dataclasses import dataclass

from meshcore.resources.routes import Timeouts


@dataclass(frozen=True)
class Deadlines:
    start: float
    request: float | None = None            # seconds, None = no limit
    backend_request: float | None = None

    @classmethod
    def of(cls, timeouts: Timeouts | None, start: float) -> "Deadlines":
        if timeouts is None:
            return cls(start)
        enabled = lambda v: v if v else None   # None and 0 both mean no limit
        return cls(start, enabled(timeouts.request), enabled(timeouts.backend_request))

    @property
    def request_deadline(self) -> float | None:
        return None if self.request is None else self.start + self.request

    def time_left(self, now: float) -> float | None:
        """Seconds before `request` expires (None: unlimited, may be <= 0: expired)."""
        d = self.request_deadline
        return None if d is None else d - now

    def attempt_deadline(self, now: float) -> float | None:
        """When an attempt starting now must give up: its own limit or the request's, earlier first."""
        limits = [d for d in (self.request_deadline,
                              None if self.backend_request is None else now + self.backend_request) if d is not None]
        return min(limits) if limits else None

    def expired(self, now: float) -> bool:
        d = self.request_deadline
        return d is not None and now >= d

    def timeout_body(self) -> str:
        return f"upstream request timeout: no complete response within the route's {self.request:g}s request timeout"

    def attempt_timeout_body(self) -> str:
        return (f"upstream request timeout: the backend did not answer within the route's "
                f"{self.backend_request:g}s backendRequest timeout")
