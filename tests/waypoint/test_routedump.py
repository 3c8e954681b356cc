"""The waypoint's /routes as `trellis routes` shows it: a View built from real resources,
its dump (waypoint/routedump.py for the routes), and the CLI's rows from that dump."""
import pytest

from meshcore.resources import parse_documents
from trellis.waypointcli import route_rows
from waypoint.routedump import format_duration
from waypoint.view import View

RESOURCES = """apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {trellis.dev/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default, labels: {trellis.dev/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.11, selector: {app: api}, ports: [{name: http, port: 8080, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: default}
spec: {clusterIP: 10.96.0.12, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /a}, method: GET, headers: [{name: x-canary, value: "true"}],
               queryParams: [{name: v, type: RegularExpression, value: "2.*"}]}]
    backendRefs: [{name: web-v1, port: 80}]
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
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: web, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
"""


def rows():
    res = parse_documents(RESOURCES, "mesh.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    view = View(res.resources, trust_domain="cluster.local", namespace="default", gateway="waypoint")
    return route_rows(view.dump_routes(), "default/waypoint")


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (1, "1s"), (0.5, "500ms"), (1.5, "1s500ms"), (90, "1m30s"),
                                          (3600, "1h"), (0.01, "10ms")])
def test_durations_are_written_as_a_user_writes_them(seconds, text):
    assert format_duration(seconds) == text


def test_the_cli_shows_a_row_per_rule_with_what_the_routes_say():
    shown = rows()
    assert [(r["parent"], r["kind"], r["route"], r["rule"]) for r in shown] == [
        ("default/api:8080", None, None, None), ("default/web:80", "HTTPRoute", "default/web", 0),
        ("default/web:80", "HTTPRoute", "default/web", 1), ("default/web:80", "GRPCRoute", "default/rpc", 0)]
    unrouted, exact, split, rpc = shown
    assert exact["matchesText"] == "Exact /a GET x-canary=true ?v~2.*"
    assert exact["backendsText"] == "web-v1:80=1" and exact["retry"] is None and exact["timeoutsText"] == ""
    assert split["matchesText"] == "PathPrefix /"
    assert split["backendsText"] == "web-v1:80=90,web-v2:80=10"
    assert split["backends"][1]["namespace"] == "other"
    assert split["timeoutsText"] == "request=1m30s,backendRequest=1s500ms"
    assert split["retryText"] == "codes=502,503 attempts=3 backoff=100ms"
    assert split["policiesText"] == "TrafficPolicy/default/web"
    assert rpc["matches"] == [{"headers": [], "method": {"type": "Exact", "service": "pkg.Echo", "method": "Say"}}]
    assert rpc["matchesText"] == "pkg.Echo/Say"
    # a port with no route: its traffic goes to the Service itself
    assert unrouted["backendsText"] == "api:8080=1" and unrouted["matchesText"] == "*"
    assert unrouted["policiesText"] == ""


CONSUMERS = """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: default}]
  rules:
  - name: tagged
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-from, value: client}]}}]
    backendRefs: [{name: web, namespace: default, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: theirs, namespace: batch}
spec:
  parentRefs: [{group: "", kind: Service, name: api, namespace: default, port: 8080}]
  rules: [{backendRefs: [{name: api, namespace: default, port: 8080}]}]
"""


def test_consumer_routes_are_listed_with_the_namespace_they_apply_to():
    res = parse_documents(RESOURCES + CONSUMERS, "mesh.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    view = View(res.resources, trust_domain="cluster.local", namespace="default", gateway="waypoint")
    shown = route_rows(view.dump_routes(), "default/waypoint")
    assert [(r["parent"], r["from"], r["route"], r["rule"], r.get("name")) for r in shown] == [
        ("default/api:8080", "*", None, None, None), ("default/api:8080", "batch", "batch/theirs", 0, None),
        ("default/web:80", "*", "default/web", 0, None), ("default/web:80", "*", "default/web", 1, None),
        ("default/web:80", "*", "default/rpc", 0, None), ("default/web:80", "client", "client/mine", 0, "tagged")]
    # api:8080 has no producer route: every other caller's traffic goes to the Service itself
    assert view.routes.consumer_namespaces("default", "web", 80) == ["client"]
    assert view.routes.consumer_namespaces("default", "api", 8080) == ["batch"]
