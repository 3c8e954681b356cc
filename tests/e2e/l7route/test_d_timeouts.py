"""HTTPRoute timeouts through a real waypoint against a backend that answers after 4 s
(`slow`): `timeouts.request` and `timeouts.backendRequest` of 1 s each give 504 within the
timeout plus a margin (1.5 s: the machine running the suite is shared); with a retry stanza
a backendRequest timeout is retried (GEP-1731), so two attempts reach the backend; and the
same backend without a timeout answers 200 after its 4 s, so a 504 can only come from the
timeout. The four requests run side by side from one client in a meshed pod."""
import uuid

from e2e.l7route.traffic import applied, received, run
from e2e.labctl import wait_until

MARGIN = 1.5
ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: slow, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /request}}]
    backendRefs: [{name: slow, port: 80}]
    timeouts: {request: 1s}
  - matches: [{path: {type: PathPrefix, value: /backend}}]
    backendRefs: [{name: slow, port: 80}]
    timeouts: {backendRequest: 1s}
  - matches: [{path: {type: PathPrefix, value: /retried}}]
    backendRefs: [{name: slow, port: 80}]
    timeouts: {request: 8s, backendRequest: 1s}
    retry: {attempts: 1, codes: [503]}
  - backendRefs: [{name: slow, port: 80}]
"""


def route_applied(routes):
    return sum(r["route"] == "default/slow" for r in routes) == 4


def test_a_backend_slower_than_the_timeouts_gives_504_in_time(lab, tmp_path):
    marker = uuid.uuid4().hex
    paths = [f"/request/{marker}", f"/backend/{marker}", f"/retried/{marker}", f"/none/{marker}"]
    with applied(lab, ROUTE, "slow", route_applied, "slow's timeout route"):
        recs = run(lab, tmp_path / "slow.jsonl", "10.96.0.15", cases=[{"path": p} for p in paths], concurrency=4)
    request, backend, retried, none = recs
    took = {p: round(r["t1"] - r["t0"], 2) for p, r in zip(paths, recs)}
    print("elapsed:", took)
    assert (none["status"], none["pod"]) == (200, "slow") and none["t1"] - none["t0"] >= 4, none
    assert request["status"] == 504 and "1s request timeout" in request["body"], request
    assert 1.0 <= request["t1"] - request["t0"] <= 1.0 + MARGIN, took
    assert backend["status"] == 504 and "1s backendRequest timeout" in backend["body"], backend
    assert 1.0 <= backend["t1"] - backend["t0"] <= 1.0 + MARGIN, took
    # two attempts of 1 s each and a backoff of at most 25 ms between them
    assert retried["status"] == 504 and "1s backendRequest timeout" in retried["body"], retried
    assert 2.0 <= retried["t1"] - retried["t0"] <= 2.025 + MARGIN, took
    # the backend logs a request once it answers, 4 s after it came
    counts = wait_until(lambda: (c := [received(lab, "slow", p) for p in paths]) and sum(c) >= 5 and c,
                        "the slow backend to log its requests", timeout=15)
    assert counts == [1, 1, 2, 1], dict(zip(paths, counts))
