"""Rate limits, outlier detection, pool limits and load balancing with a hand-moved clock."""
import random
from collections import Counter

from meshcore.resources.policies import (ConnectionPool, OutlierDetection, TargetRef, RateLimit,
                                         RateLimitOverride, RateLimitPolicySpec)
from waypoint.filters.lb import Balancer
from waypoint.filters.outlier import OutlierDetector
from waypoint.filters.pool import ADMIT, QUEUE, REJECT, PoolLimits
from waypoint.filters.ratelimit import RateLimiter

from wp_helpers import Clock

BATCH = "spiffe://cluster.local/ns/default/sa/batch"
WEB = "spiffe://cluster.local/ns/default/sa/web"


def limiter(clock, key="None", overrides=(), burst=None):
    spec = RateLimitPolicySpec((TargetRef("Service", "web"),), RateLimit(10, "Second", burst), key,
                               tuple(overrides))
    return RateLimiter("rl", spec, clock)


def test_token_bucket_admits_the_rate_under_a_higher_offered_load():
    clock = Clock()
    rl = limiter(clock)
    admitted = []
    for second in range(10):
        ok = 0
        for _ in range(50):                      # 50 req/s offered, evenly
            ok += rl.check(WEB).allowed
            clock.advance(1 / 50)
        admitted.append(ok)
    assert admitted[0] == 10 + 9 or admitted[0] == 10 + 10    # the burst, then the refill
    assert all(9 <= a <= 11 for a in admitted[1:]), admitted


def test_refusal_is_429_with_retry_after_and_draft_headers():
    clock = Clock()
    rl = limiter(clock, burst=2)
    first = rl.check(None)
    assert first.allowed and dict(first.headers) == {"ratelimit-policy": '"rl";q=10;w=1', "ratelimit": '"rl";r=1;t=1'}
    rl.check(None)
    v = rl.check(None)
    h = dict(v.headers)
    assert not v.allowed and v.status == 429 and h["retry-after"] == "1"
    assert h["ratelimit"] == '"rl";r=0;t=1' and "10 requests per second, burst 2" in v.body
    clock.advance(0.1)
    assert rl.check(None).allowed and rl.rejected == 1


def test_keyed_by_principal_and_overrides():
    clock = Clock()
    over = RateLimitOverride(BATCH, RateLimit(100, "Minute", 3))
    shared = limiter(clock, overrides=[over])
    assert sum(shared.check(WEB).allowed for _ in range(20)) == 10
    assert not shared.check("spiffe://cluster.local/ns/default/sa/other").allowed    # one bucket for all
    assert sum(shared.check(BATCH).allowed for _ in range(20)) == 3                    # its own bucket
    v = shared.check(BATCH)
    assert dict(v.headers)["ratelimit-policy"] == '"rl";q=100;w=60' and "for " + BATCH in v.body
    keyed = limiter(Clock(), key="SourcePrincipal")
    assert sum(keyed.check(WEB).allowed for _ in range(20)) == 10
    assert sum(keyed.check("spiffe://cluster.local/ns/x/sa/y").allowed for _ in range(20)) == 10


def test_outlier_ejects_after_consecutive_errors_and_returns():
    clock = Clock()
    od = OutlierDetector(OutlierDetection(consecutive_5xx_errors=3, interval=10, base_ejection_time=30,
                                          max_ejection_percent=50), clock)
    pool = ["a", "b", "c", "d"]
    assert not od.record("a", 503, pool=pool) and not od.record("a", 200, pool=pool)   # a success resets
    assert [od.record("a", 500, pool=pool) for _ in range(3)] == [False, False, True]
    assert od.is_ejected("a") and od.available(pool) == ["b", "c", "d"]
    clock.advance(29)
    assert od.is_ejected("a")
    clock.advance(1)
    assert not od.is_ejected("a")
    for _ in range(3):                                # ejected again at once: twice as long
        od.record("a", connect_failure=True, pool=pool)
    assert od.state("a")["ejected_for_s"] == 60 and od.state("a")["ejections"] == 2
    clock.advance(60 + 25)                            # two healthy intervals take the multiplier down
    assert od.state("a")["ejections"] == 0 and od.ejections_total == 2


def test_outlier_never_ejects_more_than_the_share_and_gateway_errors():
    clock = Clock()
    od = OutlierDetector(OutlierDetection(consecutive_5xx_errors=0, consecutive_gateway_errors=2,
                                          max_ejection_percent=50), clock)
    pool = ["a", "b", "c", "d"]
    for ep in pool:
        od.record(ep, 500, pool=pool)
        od.record(ep, 500, pool=pool)                 # 500 is not a gateway error
    assert od.available(pool) == pool
    for ep in pool:
        od.record(ep, 502, pool=pool)
        od.record(ep, connect_failure=True, pool=pool)
    assert sum(od.is_ejected(e) for e in pool) == 2   # 50% of four
    everyone_bad = OutlierDetector(OutlierDetection(consecutive_5xx_errors=1, max_ejection_percent=10), clock)
    assert everyone_bad.record("x", 503, pool=["x", "y"])       # at least one may always go
    assert not everyone_bad.record("y", 503, pool=["x", "y"])
    assert everyone_bad.available(["x"]) == ["x"]               # all ejected: panic, use them all


def test_pool_limits_admit_queue_then_503():
    p = PoolLimits("default/web", ConnectionPool(max_connections=2, max_pending_requests=1), "default/tp")
    a, b, c, d = (p.acquire() for _ in range(4))
    assert (a.outcome, b.outcome, c.outcome, d.outcome) == (ADMIT, ADMIT, QUEUE, REJECT)
    assert "allows 2 requests in flight and 1 pending (TrafficPolicy default/tp)" in d.body
    assert p.release() == c.ticket and p.active == 2          # the slot goes to the queued request
    assert p.release() is None and p.active == 1 and p.overflows == 1
    h2 = PoolLimits("default/web", ConnectionPool(max_connections=1, max_requests=3), multiplexed=True)
    assert [h2.acquire().outcome for _ in range(4)] == [ADMIT, ADMIT, ADMIT, QUEUE]
    q = PoolLimits("s", ConnectionPool(max_requests=1, max_pending_requests=5))
    q.acquire()
    t = q.acquire()
    q.abandon(t.ticket)
    assert q.release() is None and q.active == 0
    assert PoolLimits("s", ConnectionPool()).acquire().outcome == ADMIT


def test_round_robin_and_least_request():
    rr = Balancer()
    assert [rr.pick(["a", "b", "c"]) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    lr = Balancer("LEAST_REQUEST", random.Random(3))
    for _ in range(50):
        lr.start("slow")                               # 50 requests stuck on one endpoint
    picks = Counter(lr.pick(["slow", "b", "c", "d"]) for _ in range(1000))
    assert picks["slow"] == 0 and min(picks[e] for e in "bcd") > 200
    lr.finish("slow")
    assert lr.active["slow"] == 49
