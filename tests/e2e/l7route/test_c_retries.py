"""Retries through a real waypoint, counted where they land: the echo backends log every
request they receive, and the waypoint's /metrics counts the retries it sent.

- `flaky` answers every other request with 503; its route retries 503: the client sees only
  200s. Every other request failing needs one retry per request, more than the default
  budget (20%, floor 3/s) gives, so its TrafficPolicy raises the budget to 100%.
- `down` answers 503 always; its route asks for 3 retries on 503 (4x the load without a
  budget) and keeps the default budget: the backend receives at most (1 + 20%) x the
  client's requests plus the floor (3/s over the budget's 10 s window: 30), and the waypoint
  counts the retries it refused.
- `refusing` has no app listening: with no route at all, the waypoint still retries connect
  failures twice (Istio's default policy: 3x the load without a budget), under the same
  budget; its node's ztunnel logs every connection it tried, which is what is counted."""
import uuid

from e2e.l7route.traffic import applied, failures, received, run, service_routes, waypoint_metric
from e2e.labctl import wait_until

RETRIES = "trellis_waypoint_retries_total"
REFUSED = "trellis_waypoint_retry_budget_exhausted_total"


def retry_route(service: str, attempts: int) -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {service}, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {service}, port: 80}}]
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
    retry: {{attempts: {attempts}, codes: [503], backoff: 10ms}}
"""


FLAKY_BUDGET = """apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: flaky, namespace: default}
spec:
  targetRefs: [{kind: Service, name: flaky}]
  retryBudget: {percent: 100}
"""


def route_with_retry(service, attempts, policy=None):
    return lambda rows: any(r["route"] == f"default/{service}" and (r["retry"] or {}).get("attempts") == attempts
                            and (policy is None or policy in r["policies"]) for r in rows)


def test_a_backend_failing_every_other_request_is_hidden_by_retries(lab, tmp_path):
    n, marker = 100, f"flaky-{uuid.uuid4().hex}"
    with applied(lab, retry_route("flaky", 2) + "---\n" + FLAKY_BUDGET, "flaky",
                 route_with_retry("flaky", 2, "TrafficPolicy/default/flaky"), "flaky's retry route and budget"):
        before = waypoint_metric(lab, RETRIES, destination_service="default/flaky", reason="status 503")
        recs = run(lab, tmp_path / "flaky.jsonl", "10.96.0.13", path=f"/{marker}/{{i}}", count=n)
        retries = waypoint_metric(lab, RETRIES, destination_service="default/flaky", reason="status 503") - before
    assert len(recs) == n and failures(recs) == [], failures(recs)[:5]
    got = received(lab, "flaky", marker)
    print(f"flaky: {n} requests, all 200; the backend received {got}; {retries:.0f} retries counted")
    # one client at a time: the backend's answers alternate, so every request that drew a
    # 503 was retried once and then got the 200 the client saw
    assert got - n == got // 2, f"flaky received {got} requests for {n} client requests"
    assert retries == got - n >= n // 2 - 1, f"the waypoint counted {retries} retries; flaky received {got}"


def test_a_down_backend_receives_at_most_the_retry_budget_more(lab, tmp_path):
    marker = f"down-{uuid.uuid4().hex}"
    with applied(lab, retry_route("down", 3), "down", route_with_retry("down", 3), "down's retry route"):
        before = (waypoint_metric(lab, RETRIES, destination_service="default/down"),
                  waypoint_metric(lab, REFUSED, destination_service="default/down"))
        # bounded to 7 s, so that the whole run sits in one 10 s budget window
        recs = run(lab, tmp_path / "down.jsonl", "10.96.0.14", path=f"/{marker}/{{i}}", count=300, concurrency=4,
                   duration=7)
        retries = waypoint_metric(lab, RETRIES, destination_service="default/down") - before[0]
        refused = waypoint_metric(lab, REFUSED, destination_service="default/down") - before[1]
    n = len(recs)
    span = max(r["t1"] for r in recs) - min(r["t0"] for r in recs)
    assert n >= 100 and span < 9, f"{n} requests in {span:.1f}s: the bound below needs one budget window"
    # the client gets the backend's own 503 once retries are used up or refused
    assert [r for r in recs if r["status"] != 503 or "trellis-echo down:" not in r.get("body", "")] == []
    got = received(lab, "down", marker)
    print(f"down: {n} requests in {span:.1f}s; the backend received {got} (budget bound {n + 0.2 * n + 30:.0f}, "
          f"without a budget {4 * n}); {retries:.0f} retries sent, {refused:.0f} refused by the budget")
    bound = n + 0.20 * n + 3 * 10   # (1 + 20%) x requests + the floor, 3/s over the 10 s window
    assert n + 30 <= got <= bound, (f"down received {got} requests for {n} client requests: the budget allows "
                                    f"{bound:.0f} (without one: {4 * n})")
    assert retries == got - n, f"the waypoint counted {retries} retries; down received {got - n} beyond the requests"
    assert refused > 0, "the waypoint never counted a retry refused by the budget"


def refused_tunnels(lab, pod: str) -> int:
    """Tunnels the pod's node's ztunnel could not connect to the app (its access log)."""
    p = lab.pod(pod)
    log = lab.state_dir / "nodes" / p["node"] / "ztunnel.log"
    needle = f'"dst": "{p["address"]}:8080"'
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if needle in line and "connection refused by the application" in line)


def test_connect_failures_are_retried_by_default_within_the_budget(lab, tmp_path):
    assert service_routes(lab, "refusing") == []   # no route: only the default retry policy applies
    before = (refused_tunnels(lab, "refusing"),
              waypoint_metric(lab, RETRIES, destination_service="default/refusing", reason="connect-failure"))
    recs = run(lab, tmp_path / "refusing.jsonl", "10.96.0.16", count=150, concurrency=4, duration=7)
    n = len(recs)
    span = max(r["t1"] for r in recs) - min(r["t0"] for r in recs)
    assert n >= 50 and span < 9, f"{n} requests in {span:.1f}s: the bound below needs one budget window"
    assert [r for r in recs if r["status"] != 503 or "refused" not in r.get("body", "")] == []
    retries = waypoint_metric(lab, RETRIES, destination_service="default/refusing", reason="connect-failure") - before[1]
    tried = wait_until(lambda: (t := refused_tunnels(lab, "refusing") - before[0]) >= n + retries and t,
                       "refusing's ztunnel to log every connection it tried", timeout=10)
    print(f"refusing: {n} requests in {span:.1f}s; its ztunnel tried {tried} connections (budget bound "
          f"{1.2 * n + 30:.0f}, without a budget {3 * n}); {retries:.0f} retries")
    assert tried == n + retries and n + 30 <= tried <= n + 0.20 * n + 3 * 10, tried
