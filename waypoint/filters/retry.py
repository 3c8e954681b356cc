"""Retries (HTTPRoute `retry`, GEP-1731) as a small per-request state machine, with Istio's
meaning of an HTTPRoute (pilot/pkg/config/kube/gateway/conversion.go) and Envoy's mechanics
(router/retry_state_impl.cc):
- a `retry` stanza retries its `codes`, plus connect failures, resets before any response
  byte (refused-stream) and gRPC UNAVAILABLE/CANCELLED answers; `attempts` defaults to 2;
- no stanza still retries connection failures and gRPC UNAVAILABLE/CANCELLED twice, never a
  status code (Istio's default retry policy);
- never after the response has started. Backoff: at least `backoff` (default 25 ms,
Envoy's), doubling per attempt, capped at 10x, full jitter above the minimum so that retries
are never earlier than the spec allows. The request body is held for replay up to a limit;
a longer body makes the request not retryable (it has already streamed away). Every retry
asks the shared Budget first.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from meshcore.resources.routes import Retry

from .budget import Budget

DEFAULT_BACKOFF = 0.025
MAX_BACKOFF_FACTOR = 10
MAX_REPLAY_BYTES = 64 * 1024
DEFAULT_ATTEMPTS = 2          # Istio's, with or without a retry stanza
ISTIO_DEFAULT = Retry(codes=(), attempts=DEFAULT_ATTEMPTS)
GRPC_RETRYABLE = (1, 14)      # CANCELLED, UNAVAILABLE (Envoy retry-on cancelled,unavailable)
CONNECT_FAILURE = "connect-failure"
RESET_BEFORE_RESPONSE = "reset-before-response"
ATTEMPT_TIMEOUT = "attempt-timeout"   # timeouts.backendRequest ran out: retried only under a stanza


@dataclass
class ReplayBody:
    """The request body as sent so far, kept so a retry can send it again."""
    limit: int = MAX_REPLAY_BYTES
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflowed: bool = False

    def add(self, data: bytes) -> None:
        if self.overflowed:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflowed, self.chunks = True, []
        else:
            self.chunks.append(data)

    def replay(self) -> bytes:
        if self.overflowed:
            raise ValueError(f"the request body is over {self.limit} bytes and was not kept")
        return b"".join(self.chunks)


@dataclass(frozen=True)
class Verdict:
    retry: bool
    delay: float = 0.0
    why: str = ""


class RetryState:
    """One client request across its attempts. Call `outcome()` after each attempt."""

    def __init__(self, policy: Retry | None, budget: Budget, rng: random.Random | None = None,
                 body: ReplayBody | None = None, record: bool = True):
        self.explicit = policy is not None
        self.policy = policy if policy is not None else ISTIO_DEFAULT
        self.budget = budget
        self.rng = rng or random.Random()
        self.retries = 0
        self.body = body if body is not None else ReplayBody()   # the request's own, when the caller has it
        if record:   # False: the caller recorded this request already (fast1.py, before its first attempt)
            budget.record_request()

    @property
    def max_retries(self) -> int:
        return self.policy.attempts if self.policy.attempts is not None else DEFAULT_ATTEMPTS

    def backoff(self) -> float:
        """The delay before retry number self.retries+1: base*2^n with jitter, never below base."""
        base = self.policy.backoff if self.policy.backoff is not None else DEFAULT_BACKOFF
        ceiling = min(base * (2 ** self.retries), base * MAX_BACKOFF_FACTOR)
        return base + self.rng.random() * (ceiling - base)

    def retryable(self, status: int | None, failure: str | None, grpc_status: int | None = None) -> bool:
        if failure in (CONNECT_FAILURE, RESET_BEFORE_RESPONSE) or grpc_status in GRPC_RETRYABLE:
            return True
        if failure == ATTEMPT_TIMEOUT:
            return self.explicit
        return status is not None and status in self.policy.codes

    def outcome(self, status: int | None = None, failure: str | None = None,
                time_left: float | None = None, grpc_status: int | None = None) -> Verdict:
        """status: the response's status; failure: CONNECT_FAILURE, RESET_BEFORE_RESPONSE or ATTEMPT_TIMEOUT;
        grpc_status: a grpc-status in the response headers (a trailers-only answer);
        time_left: what remains of timeouts.request (the spec: retries never outlast it)."""
        if not self.retryable(status, failure, grpc_status):
            return Verdict(False, why="not retryable")
        if self.retries >= self.max_retries:
            return Verdict(False, why=f"{self.retries} retries used of {self.max_retries}")
        if self.body.overflowed:
            return Verdict(False, why="request body too large to replay")
        delay = self.backoff()
        if time_left is not None and delay >= time_left:
            return Verdict(False, why="the request timeout would pass before the retry")
        if not self.budget.try_retry():
            return Verdict(False, why="retry budget exhausted")
        self.retries += 1
        why = failure or (f"grpc-status {grpc_status}" if grpc_status in GRPC_RETRYABLE else f"status {status}")
        return Verdict(True, delay, why=why)
