"""Retries and the retry budget, with a hand-moved clock and a seeded random source."""
import random

from meshcore.resources.policies import RetryBudget
from meshcore.resources.routes import Retry
from waypoint.filters.budget import Budget
from waypoint.filters.retry import CONNECT_FAILURE, RESET_BEFORE_RESPONSE, ReplayBody, RetryState

from wp_helpers import Clock

POLICY = Retry(codes=(503,), attempts=2, backoff=0.1)


def test_retries_listed_codes_and_connection_failures_up_to_attempts():
    clock = Clock()
    budget = Budget(clock=clock)
    s = RetryState(POLICY, budget, random.Random(1))
    assert not s.outcome(status=500).retry and s.outcome(status=500).why == "not retryable"
    v1 = s.outcome(status=503)
    v2 = s.outcome(failure=CONNECT_FAILURE)
    assert v1.retry and v2.retry and s.retries == 2
    last = s.outcome(failure=RESET_BEFORE_RESPONSE)
    assert not last.retry and last.why == "2 retries used of 2"
    # No retry stanza: Istio's default, connection failures and gRPC UNAVAILABLE twice, no status code.
    default = RetryState(None, budget)
    assert not default.outcome(status=503).retry
    assert default.outcome(failure=CONNECT_FAILURE).retry and default.outcome(status=200, grpc_status=14).retry
    assert default.outcome(failure=CONNECT_FAILURE).why == "2 retries used of 2"
    # A stanza without attempts: Istio's 2.
    assert RetryState(Retry(codes=(503,)), budget).max_retries == 2


def test_backoff_never_below_the_minimum_grows_and_is_capped():
    s = RetryState(Retry(codes=(503,), attempts=10, backoff=0.1), Budget(clock=Clock()), random.Random(7))
    delays = []
    for _ in range(10):
        v = s.outcome(status=503)
        assert v.retry
        delays.append(v.delay)
    assert all(0.1 <= d <= 1.0 for d in delays)
    assert max(delays[5:]) > 0.2                                     # grows past the base with the attempts
    s = RetryState(Retry(codes=(503,), attempts=3), Budget(clock=Clock()), random.Random(1))
    assert 0.025 <= s.outcome(status=503).delay <= 0.05              # Envoy's 25 ms default


def test_no_retry_past_the_request_timeout():
    s = RetryState(Retry(codes=(503,), attempts=3, backoff=1.0), Budget(clock=Clock()))
    v = s.outcome(status=503, time_left=0.5)
    assert not v.retry and "request timeout" in v.why and s.retries == 0


def test_body_is_held_for_replay_until_the_limit():
    body = ReplayBody(limit=10)
    body.add(b"hello")
    body.add(b"world")
    assert body.replay() == b"helloworld"
    s = RetryState(POLICY, Budget(clock=Clock()))
    s.body = ReplayBody(limit=4)
    s.body.add(b"too long")
    v = s.outcome(status=503)
    assert not v.retry and v.why == "request body too large to replay"


def test_budget_floor_is_per_second_over_the_window():
    clock = Clock()
    budget = Budget(RetryBudget(percent=20, min_retries_per_second=3, ttl=10), clock)
    # A backend that is down, one request in: the floor alone allows 3/s * 10 s = 30 retries.
    allowed = sum(budget.try_retry() for _ in range(100))
    assert allowed == 30 and budget.refused == 70


def test_budget_caps_retries_at_a_share_of_requests():
    clock = Clock()
    budget = Budget(RetryBudget(percent=20, min_retries_per_second=0, ttl=10), clock)
    sent = retried = 0
    for second in range(30):
        for _ in range(100):                     # 100 req/s, every one failing and asking to retry
            s = RetryState(Retry(codes=(503,), attempts=3), budget)
            sent += 1
            while s.outcome(status=503).retry:
                retried += 1
        clock.advance(1)
    assert retried <= 0.2 * sent and retried >= 0.19 * sent          # (1 + 20%) x the load, not 4x


def test_budget_window_forgets_old_requests():
    clock = Clock()
    budget = Budget(RetryBudget(percent=50, min_retries_per_second=0, ttl=2), clock)
    for _ in range(10):
        budget.record_request()
    assert budget.allowance() == 5
    clock.advance(1)
    assert budget.allowance() == 5
    clock.advance(1.5)
    assert budget.allowance() == 0 and not budget.try_retry()


def test_deadlines_from_route_timeouts():
    from meshcore.resources.routes import Timeouts
    from waypoint.filters.timeouts import Deadlines

    d = Deadlines.of(Timeouts(request=10, backend_request=2), start=100)
    assert d.attempt_deadline(100) == 102 and d.attempt_deadline(109) == 110     # never past the request's
    assert d.time_left(104) == 6 and not d.expired(109.9) and d.expired(110)
    assert "10s request timeout" in d.timeout_body() and "2s backendRequest" in d.attempt_timeout_body()
    off = Deadlines.of(Timeouts(request=0, backend_request=0), start=100)        # "0s" disables
    assert off.attempt_deadline(100) is None and off.time_left(1e9) is None and not off.expired(1e9)
    assert Deadlines.of(None, 5).attempt_deadline(5) is None
    only_backend = Deadlines.of(Timeouts(backend_request=1.5), start=0)
    assert only_backend.attempt_deadline(3) == 4.5 and only_backend.time_left(3) is None


def test_attempt_timeouts_are_retried_only_under_a_retry_stanza():
    from waypoint.filters.retry import ATTEMPT_TIMEOUT
    budget = Budget(clock=Clock())
    assert RetryState(Retry(codes=(503,)), budget).outcome(failure=ATTEMPT_TIMEOUT).retry
    assert not RetryState(None, budget).outcome(failure=ATTEMPT_TIMEOUT).retry
