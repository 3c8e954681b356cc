"""Policy attachment: which TrafficPolicy wins, which RateLimitPolicies apply."""
from meshcore.resources import parse_documents
from waypoint.policies import rate_limits, traffic_policy
from waypoint.routing import RouteRef


def docs(text):
    res = parse_documents(text, "p.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    return res.resources


def tp(name, target="web", ns="default", created=None, lb="ROUND_ROBIN"):
    ts = f", creationTimestamp: '{created}'" if created else ""
    return (f"apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: {ns}{ts}}}\n"
            f"spec: {{targetRefs: [{{kind: Service, name: {target}}}], loadBalancer: {{simple: {lb}}}}}\n---\n")


def rl(name, target, ns="default"):
    return (f"apiVersion: trellis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec: {{targetRefs: [{target}], requestsPerUnit: 5}}\n---\n")


def test_no_traffic_policy_means_defaults_with_the_retry_budget_on():
    choice = traffic_policy(docs(tp("other", target="db")), "default", "web")
    assert choice.name is None and choice.spec.retry_budget.percent == 20
    assert choice.spec.retry_budget.min_retries_per_second == 3 and choice.spec.outlier_detection is None


def test_oldest_traffic_policy_wins_then_name():
    rs = docs(tp("b", created="2024-02-01T00:00:00Z") + tp("a", lb="LEAST_REQUEST", created="2024-03-01T00:00:00Z")
              + tp("c") + tp("x", ns="other"))
    choice = traffic_policy(rs, "default", "web")
    assert choice.name == "default/b" and choice.conflicts == ("default/a", "default/c")
    choice = traffic_policy(docs(tp("b") + tp("a", lb="LEAST_REQUEST")), "default", "web")
    assert choice.name == "default/a" and choice.spec.load_balancer == "LEAST_REQUEST"


def test_rate_limits_for_the_service_and_the_matched_route():
    rs = docs(rl("svc", "{kind: Service, name: web}") + rl("route", "{group: gateway.networking.k8s.io, "
              "kind: HTTPRoute, name: web-route}") + rl("elsewhere", "{kind: Service, name: web}", ns="other")
              + rl("grpc", "{group: gateway.networking.k8s.io, kind: GRPCRoute, name: web-route}"))
    assert [n for n, _ in rate_limits(rs, "default", "web")] == ["default/svc"]
    names = [n for n, _ in rate_limits(rs, "default", "web", RouteRef("HTTPRoute", "default", "web-route"))]
    assert sorted(names) == ["default/route", "default/svc"]
    names = [n for n, _ in rate_limits(rs, "default", "web", RouteRef("GRPCRoute", "default", "web-route"))]
    assert sorted(names) == ["default/grpc", "default/svc"]
