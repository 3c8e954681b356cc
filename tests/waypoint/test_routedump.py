"""The waypoint's /routes rows (waypoint/routedump.py) in the shape `trellis routes` reads:
the table the CLI prints from a real dump says what the routes say."""
import pytest

from meshcore.resources import parse_documents
from trellis.waypointcli import route_rows
from waypoint.routedump import format_duration, policy_refs, route_rows as dump_rows, unrouted_row
from waypoint.routing import RouteTable

ROUTES = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /a}, method: GET, headers: [{name: x-canary, value: "true"}],
               queryParams: [{name: v, type: RegularExpression, value: "2.*"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, namespace: other, port: 80, weight: 10}]
    timeouts: {request: 1m30s, backendRequest: 1500ms}
    retry: {attempts: 3, codes: [502, 503], backoff: 100ms}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{method: {service: pkg.Echo, method: Say}}]
    backendRefs: [{name: web-v1, port: 80}]
"""


def attached():
    res = parse_documents(ROUTES, "routes.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    table = RouteTable(res.resources, {("default", n): [80] for n in ("web", "web-v1")} | {("other", "web-v2"): [80]})
    return table.attached("default", "web", 80, "default")


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (1, "1s"), (0.5, "500ms"), (1.5, "1s500ms"), (90, "1m30s"),
                                          (3600, "1h"), (0.01, "10ms")])
def test_durations_are_written_as_a_user_writes_them(seconds, text):
    assert format_duration(seconds) == text


def test_policy_refs_name_the_namespace_only_when_it_differs():
    assert policy_refs("default", AuthorizationPolicy=["default/deny", "trellis-system/all"],
                       TrafficPolicy=["default/web"]) == ["AuthorizationPolicy/deny",
                                                          "AuthorizationPolicy/trellis-system/all", "TrafficPolicy/web"]


def test_the_cli_shows_what_the_routes_say():
    http, grpc = attached()
    rows = dump_rows("default/web", 80, http, ["TrafficPolicy/web"]) + dump_rows("default/web", 80, grpc, [])
    rows.append(unrouted_row("default/api", 8080, []))
    shown = route_rows({"routes": rows}, "default/waypoint")
    assert [(r["parent"], r["route"], r["rule"]) for r in shown] == [
        ("default/web:80", "default/web", 0), ("default/web:80", "default/web", 1), ("default/web:80", "default/rpc", 0),
        ("default/api:8080", None, None)]
    exact, split, rpc, unrouted = shown
    assert exact["matchesText"] == "Exact /a GET x-canary=true ?v~2.*"
    assert exact["backendsText"] == "web-v2:80=1" and exact["retry"] is None and exact["timeoutsText"] == ""
    assert split["matchesText"] == "PathPrefix /"
    assert split["backendsText"] == "web-v1:80=90,web-v2:80=10"
    assert split["backends"][1]["namespace"] == "other"
    assert split["timeoutsText"] == "request=1m30s,backendRequest=1s500ms"
    assert split["retryText"] == "codes=502,503 attempts=3 backoff=100ms"
    assert split["policiesText"] == "TrafficPolicy/web"
    assert rpc["kind"] == "GRPCRoute" and rpc["matches"] == [{"headers": [], "method": {"type": "Exact",
                                                                                         "service": "pkg.Echo",
                                                                                         "method": "Say"}}]
    assert rpc["matchesText"] == "pkg.Echo/Say"
    assert unrouted["backendsText"] == "api:8080=1" and unrouted["matchesText"] == "*"
