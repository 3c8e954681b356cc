"""A Service's policy pieces together: picking around ejections, updates that keep state."""
import random
from dataclasses import replace

from meshcore.resources.policies import ConnectionPool, OutlierDetection, RetryBudget, TrafficPolicySpec
from waypoint.cluster import Cluster

from wp_helpers import Clock

EPS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]


def test_failing_endpoint_is_skipped_until_it_returns():
    clock = Clock()
    spec = TrafficPolicySpec((), outlier_detection=OutlierDetection(consecutive_5xx_errors=2, base_ejection_time=30,
                                                                    max_ejection_percent=50))
    c = Cluster("default/web", spec, clock, random.Random(1))
    for _ in range(2):
        ep = EPS[0]
        c.started(ep)
        ejected = c.finished(ep, status=503, pool=EPS)
    assert ejected and c.dump(EPS)["endpoints"][EPS[0]]["ejected"]
    picks = {c.pick(EPS) for _ in range(30)}
    assert picks == {EPS[1], EPS[2]}
    clock.advance(30)
    assert {c.pick(EPS) for _ in range(30)} == set(EPS)


def test_update_keeps_the_state_of_unchanged_pieces():
    clock = Clock()
    spec = TrafficPolicySpec((), connection_pool=ConnectionPool(max_requests=1))
    c = Cluster("default/web", spec, clock)
    c.budget.record_request()
    assert c.pool.acquire().outcome == "admit"
    budget, pool = c.budget, c.pool
    c.update(replace(spec, load_balancer="LEAST_REQUEST"))
    assert c.budget is budget and c.pool is pool and c.balancer.algorithm == "LEAST_REQUEST"
    c.update(replace(spec, retry_budget=RetryBudget(percent=50)))
    assert c.budget is not budget and c.budget.spec.percent == 50 and c.pool is pool
    d = c.dump(EPS)
    assert d["in_flight"] == 1 and d["endpoints"][EPS[0]] == {"ejected": False, "active": 0}
    assert c.finished(EPS[0], status=500) is False        # no outlier detection configured
