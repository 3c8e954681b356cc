"""The waypoint's kinds: Gateway, HTTPRoute, GRPCRoute, TrafficPolicy, RateLimitPolicy — what
loads (with the spec's defaults) and the exact error for what does not."""
import pytest

from meshcore.resources import from_dict, parse_documents
from meshcore.resources.gateway import parse_duration, waypoint_replicas

WAYPOINT = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default, annotations: {trellis.dev/replicas: "2"}}
spec:
  gatewayClassName: trellis-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
  infrastructure: {labels: {team: a}}
"""

ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches:
    - path: {type: Exact, value: /v2}
      headers: [{name: x-canary, value: "true"}]
      queryParams: [{name: q, type: RegularExpression, value: "^a+$"}]
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}
    backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 0}]
    timeouts: {request: 10s, backendRequest: 500ms}
    retry: {attempts: 3, codes: [503, 502], backoff: 100ms}
  - backendRefs: [{name: web-v1, port: 80}]
"""

GRPC = """apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - matches: [{method: {service: grpc.health.v1.Health, method: Check}, headers: [{name: x-test, value: a}]}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-r, value: v}]}}]
    backendRefs: [{name: echo-v1, port: 7070, weight: 70}, {name: echo-v2, port: 7070, weight: 30}]
"""

TRAFFIC = """apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: tp, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
  loadBalancer: {simple: LEAST_REQUEST}
  connectionPool: {maxConnections: 10, maxPendingRequests: 5}
  outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50}
"""

RATE = """apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: rl, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}]
  requestsPerUnit: 10
  key: SourcePrincipal
  overrides: [{principal: spiffe://cluster.local/ns/default/sa/batch, requestsPerUnit: 100, unit: Minute, burst: 5}]
"""


def one(text):
    res = parse_documents(text, "f.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    (r,) = res.resources
    return r


def test_waypoint_gateway():
    gw = one(WAYPOINT)
    assert gw.spec.is_waypoint and gw.spec.listeners[0].protocol == "HBONE" and gw.spec.listeners[0].port == 15008
    assert waypoint_replicas(gw.annotations) == 2 and gw.spec.infrastructure.labels == {"team": "a"}
    assert one(WAYPOINT + "  addresses: [{value: 10.0.0.5}]\n").spec.addresses[0]["value"] == "10.0.0.5"
    bare = one(WAYPOINT.replace("  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n", ""))
    assert [(x.name, x.port, x.protocol) for x in bare.spec.listeners] == [("mesh", 15008, "HBONE")]
    other = one(WAYPOINT.replace("trellis-waypoint", "nginx").replace("15008, protocol: HBONE", "80, protocol: HTTP"))
    assert not other.spec.is_waypoint


def test_http_route_typed_with_spec_defaults():
    r = one(ROUTE)
    (parent,) = r.spec.parent_refs
    assert parent.is_service and parent.port == 80 and parent.namespace is None
    rule, plain = r.spec.rules
    (m,) = rule.matches
    assert (m.path.type, m.path.value, m.method) == ("Exact", "/v2", "GET")
    assert m.headers[0].type == "Exact" and m.query_params[0].type == "RegularExpression"
    assert rule.filters[0].request_header_modifier.set == (("x-a", "1"),)
    assert [(b.name, b.weight, b.port) for b in rule.backend_refs] == [("web-v1", 90, 80), ("web-v2", 0, 80)]
    assert rule.timeouts.request == 10 and rule.timeouts.backend_request == 0.5
    assert rule.retry.attempts == 3 and rule.retry.codes == (503, 502) and rule.retry.backoff == 0.1
    # No matches: PathPrefix "/"; weight defaults to 1.
    assert plain.matches[0].path.type == "PathPrefix" and plain.matches[0].path.value == "/"
    assert plain.backend_refs[0].weight == 1 and plain.timeouts is None and plain.retry is None
    empty = one(ROUTE.replace("  - backendRefs: [{name: web-v1, port: 80}]", "  - {matches: [], backendRefs: []}"))
    assert empty.spec.rules[1].matches[0].path.value == "/" and empty.spec.rules[1].backend_refs == ()
    # No rules at all: one rule matching everything (the CRD default), with no backends.
    bare = one(ROUTE.split("  rules:")[0])
    assert bare.spec.rules[0].matches[0].path.value == "/" and bare.spec.rules[0].backend_refs == ()
    # A default Gateway parentRef.
    gw = one(ROUTE.replace('{group: "", kind: Service, name: web, port: 80}', "{name: waypoint}"))
    assert gw.spec.parent_refs[0].kind == "Gateway" and gw.spec.parent_refs[0].group == "gateway.networking.k8s.io"


def test_redirect_and_rewrite_filters():
    redirect = ROUTE.replace("""    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}
    backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 0}]
""", """    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: example.org, port: 8443, statusCode: 301,
                        path: {type: ReplaceFullPath, replaceFullPath: /new}}
""")
    f = one(redirect).spec.rules[0].filters[0].request_redirect
    assert (f.scheme, f.hostname, f.port, f.status_code, f.path.replace_full_path) == (
        "https", "example.org", 8443, 301, "/new")
    rewrite = ROUTE.replace("""      requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}""",
                            """      requestHeaderModifier: {set: [{name: x-a, value: "1"}]}
    - type: URLRewrite
      urlRewrite: {hostname: other, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}""").replace(
        "type: Exact, value: /v2", "type: PathPrefix, value: /v2")
    rw = one(rewrite).spec.rules[0].filters[1].url_rewrite
    assert rw.hostname == "other" and rw.path.replace_prefix_match == "/"
    assert one(redirect.replace("statusCode: 301,", "")).spec.rules[0].filters[0].request_redirect.status_code == 302


def test_grpc_route_traffic_and_rate_limit_policies():
    g = one(GRPC)
    (m,) = g.spec.rules[0].matches
    assert (m.method.type, m.method.service, m.method.method) == ("Exact", "grpc.health.v1.Health", "Check")
    assert [b.weight for b in g.spec.rules[0].backend_refs] == [70, 30]
    tp = one(TRAFFIC).spec
    assert tp.load_balancer == "LEAST_REQUEST" and tp.connection_pool.max_connections == 10
    assert tp.connection_pool.max_requests is None
    assert tp.retry_budget.percent == 20 and tp.retry_budget.min_retries_per_second == 3  # on by default
    od = tp.outlier_detection
    assert (od.consecutive_5xx_errors, od.interval, od.base_ejection_time, od.max_ejection_percent) == (3, 5, 30, 50)
    assert od.consecutive_gateway_errors == 0
    rl = one(RATE).spec
    assert rl.key == "SourcePrincipal" and rl.limit.rate == 10 and rl.limit.capacity == 10
    (o,) = rl.overrides
    assert o.principal.endswith("/sa/batch") and o.limit.window == 60 and o.limit.capacity == 5


def test_durations():
    assert parse_duration("1h30m") == 5400 and parse_duration("500ms") == 0.5 and parse_duration("0s") == 0
    for bad in ("1.5s", "10", "s", "123456s", "1d", "1s1s1s1s1s"):
        with pytest.raises(ValueError, match="not a Gateway API duration"):
            parse_duration(bad)


BAD = [
    (WAYPOINT.replace("15008, protocol: HBONE", "15009, protocol: HBONE"), "spec.listeners[0].port",
     "the HBONE listener must be on port 15008, got 15009"),
    (WAYPOINT.replace("protocol: HBONE", "protocol: HTTP"), "spec.listeners",
     "exactly one listener, protocol HBONE on port 15008"),
    (WAYPOINT.replace("protocol: HBONE", "protocol: QUIC"), "spec.listeners[0].protocol",
     "must be one of HTTP, HTTPS, TLS, TCP, UDP, HBONE, got 'QUIC'"),
    (WAYPOINT.replace('"2"', '"two"'), "metadata.annotations.trellis.dev/replicas",
     "must be a replica count 1-16 (a quoted integer), got 'two'"),
    (WAYPOINT.replace('"2"', '"0"'), "metadata.annotations.trellis.dev/replicas", "must be a replica count 1-16"),
    (WAYPOINT.replace("{labels: {team: a}}", "{parametersRef: {kind: ConfigMap, name: x}}"),
     "spec.infrastructure.parametersRef", "is not supported: set replicas with the trellis.dev/replicas annotation"),
    (WAYPOINT.replace("gatewayClassName", "gatewayClass"), "spec.gatewayClass", "unknown field"),
    (WAYPOINT + "  addresses: [{value: 10.0.0.300}]\n", "spec.addresses[0].value", "must be an IPv4 or IPv6 address"),
    (WAYPOINT + "  addresses: [{type: Hostname, value: Bad_Host}]\n", "spec.addresses[0].value", "not a valid hostname"),
    (ROUTE.replace("type: Exact, value: /v2", "type: Exact, value: v2"), "spec.rules[0].matches[0].path.value",
     "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"),
    (ROUTE.replace("value: /v2", "value: /a//b"), "spec.rules[0].matches[0].path.value", "must not contain '//'"),
    (ROUTE.replace("value: /v2", "value: /a%2Fb"), "spec.rules[0].matches[0].path.value", "must not contain '%2F'"),
    (ROUTE.replace("value: /v2", "value: /a/.."), "spec.rules[0].matches[0].path.value", "must not end with '/..'"),
    (ROUTE.replace("type: Exact, value: /v2", "type: RegularExpression, value: '/(['"),
     "spec.rules[0].matches[0].path.value", "is not a valid regular expression"),
    (ROUTE.replace("type: Exact,", "type: Prefix,"), "spec.rules[0].matches[0].path.type",
     "must be one of Exact, PathPrefix, RegularExpression, got 'Prefix'"),
    (ROUTE.replace("method: GET", "method: get"), "spec.rules[0].matches[0].method", "must be one of GET, HEAD"),
    (ROUTE.replace("name: x-canary", "name: 'x canary'"), "spec.rules[0].matches[0].headers[0].name",
     "is not a valid HTTP header name"),
    (ROUTE.replace("weight: 90", "weight: -1"), "spec.rules[0].backendRefs[0].weight", "must be a weight 0-1000000"),
    (ROUTE.replace("{name: web-v1, port: 80, weight: 90}", "{name: web-v1, weight: 90}"),
     "spec.rules[0].backendRefs[0].port", "Must have port for Service reference"),
    (ROUTE.replace("backendRequest: 500ms", "backendRequest: 11s"), "spec.rules[0].timeouts",
     "backendRequest timeout cannot be longer than request timeout"),
    (ROUTE.replace("request: 10s", "request: 10sec"), "spec.rules[0].timeouts.request",
     "'10sec' is not a Gateway API duration"),
    (ROUTE.replace("codes: [503, 502]", "codes: [200]"), "spec.rules[0].retry.codes[0]",
     "must be an HTTP status code 400-599, got 200"),
    (ROUTE.replace("attempts: 3", "attempts: 0"), "spec.rules[0].retry.attempts", "must be an attempt count 1-1000"),
    (ROUTE.replace("type: RequestHeaderModifier\n", "type: RequestMirror\n"), "spec.rules[0].filters[0].type",
     "RequestMirror is not supported by trellis waypoints"),
    (ROUTE.replace("requestHeaderModifier: {", "responseHeaderModifier: {"),
     "spec.rules[0].filters[0].responseHeaderModifier",
     "filter.responseHeaderModifier must be nil if the filter.type is not ResponseHeaderModifier"),
    (ROUTE.replace("remove: [x-c]", "remove: [X-A]"), "spec.rules[0].filters[0].requestHeaderModifier.remove[0]",
     "header 'X-A' already has an action (set); one action per header name"),
    (ROUTE.replace("- type: RequestHeaderModifier\n", "- type: RequestRedirect\n      requestRedirect: {}\n"
                   "    - type: RequestHeaderModifier\n"), "spec.rules[0]",
     "RequestRedirect filter must not be used together with backendRefs"),
    (ROUTE.replace("      requestHeaderModifier: {set: [{name: x-a, value: \"1\"}], add: [{name: x-b, value: \"2\"}], "
                   "remove: [x-c]}", "      requestHeaderModifier: {}\n    - type: URLRewrite\n      urlRewrite:"
                   " {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}"), "spec.rules[0]",
     "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"),
    (ROUTE.replace("- type: RequestHeaderModifier\n", "- type: URLRewrite\n      urlRewrite: {}\n"
                   "    - type: RequestRedirect\n      requestRedirect: {}\n    - type: RequestHeaderModifier\n"),
     "spec.rules[0].filters", "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite"),
    (ROUTE.replace("port: 80}]\n  rules", "port: 80}, {group: \"\", kind: Service, name: web, port: 80}]\n  rules"),
     "spec.parentRefs[1]", "is listed twice"),
    (GRPC.replace("{service: grpc.health.v1.Health, method: Check}", "{type: Exact}"),
     "spec.rules[0].matches[0].method", "One or both of 'service' or 'method' must be specified"),
    (GRPC.replace("method: Check}", "method: Check/x}"), "spec.rules[0].matches[0].method.method",
     "method must only contain valid characters"),
    (GRPC.replace("type: ResponseHeaderModifier", "type: URLRewrite"), "spec.rules[0].filters[0].type",
     "must be one of RequestHeaderModifier, ResponseHeaderModifier, got 'URLRewrite'"),
    (TRAFFIC.replace("LEAST_REQUEST", "RANDOM"), "spec.loadBalancer.simple",
     "must be one of ROUND_ROBIN, LEAST_REQUEST, got 'RANDOM'"),
    (TRAFFIC.replace("kind: Service", "kind: HTTPRoute"), "spec.targetRefs[0].kind", "must be one of Service"),
    (TRAFFIC.replace("maxEjectionPercent: 50", "maxEjectionPercent: 150"),
     "spec.outlierDetection.maxEjectionPercent", "must be a percentage 0-100"),
    (TRAFFIC.replace("interval: 5s", "interval: 0s"), "spec.outlierDetection.interval", "must be longer than 0s"),
    (TRAFFIC + "  retryBudget: {percent: 120}\n", "spec.retryBudget.percent", "must be a percentage 0-100, got 120"),
    (TRAFFIC.replace("maxConnections: 10", "maxConections: 10"), "spec.connectionPool.maxConections",
     "unknown field (allowed: maxConnections, maxPendingRequests, maxRequests)"),
    (TRAFFIC.replace("  targetRefs: [{kind: Service, name: web}]\n", ""), "spec.targetRefs", "is required"),
    (RATE.replace("requestsPerUnit: 10", "requestsPerUnit: 0"), "spec.requestsPerUnit", "must be a count"),
    (RATE.replace("key: SourcePrincipal", "key: Principal"), "spec.key", "must be one of None, SourcePrincipal"),
    (RATE.replace("unit: Minute", "unit: Day"), "spec.overrides[0].unit", "must be one of Second, Minute, Hour"),
    (RATE.replace("principal: spiffe://cluster.local/ns/default/sa/batch", "principal: batch"),
     "spec.overrides[0].principal", "is not a workload SPIFFE ID"),
    (RATE.replace("ns/default/sa/batch", "ns/default/sa/batch*"), "spec.overrides[0].principal",
     "is not a workload SPIFFE ID"),
    (RATE.replace("group: gateway.networking.k8s.io, ", ""), "spec.targetRefs[0].group",
     "a HTTPRoute is in group 'gateway.networking.k8s.io', got ''"),
]


@pytest.mark.parametrize("text,path,message", BAD)
def test_bad_waypoint_documents_name_file_object_and_field(text, path, message):
    res = parse_documents(text, "cfg/x.yaml")
    assert res.resources == []
    assert any(e.path == path and message in e.message for e in res.errors), [str(e) for e in res.errors]
    assert all(str(e).startswith("cfg/x.yaml: ") for e in res.errors)


def test_a_bad_override_principal_says_the_expected_shape_once():
    res = parse_documents(RATE.replace("principal: spiffe://cluster.local/ns/default/sa/batch", "principal: batch"),
                          "f.yaml")
    assert [e.message for e in res.errors] == [
        "'batch' is not a workload SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<sa>)"]


def test_round_trip_through_raw():
    for text in (WAYPOINT, ROUTE, GRPC, TRAFFIC, RATE):
        r = one(text)
        again = from_dict(r.to_dict())
        assert again.spec == r.spec


def test_readme_waypoint_example_loads():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("## Waypoints (in progress)", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    res = parse_documents(block, "README.md")
    assert res.errors == [] and [r.kind for r in res.resources] == [
        "Gateway", "HTTPRoute", "TrafficPolicy", "RateLimitPolicy"]
