"""Rule precedence through a real waypoint, as the Gateway API orders HTTPRoute matches
across every rule of every route attached to a Service (httproute_types.go, HTTPRouteRule
`matches`): an Exact path, then the longest PathPrefix, then a method match, then the most
header matches, then the most query-param matches; ties go to the oldest route
(creationTimestamp), then "{namespace}/{name}" alphabetically, then the first rule of the
route. RegularExpression precedence is implementation-specific: ours is Istio's (after every
prefix, the longer expression first). Every rule tags its answers with a ResponseHeaderModifier
(`x-rule`), so each answer says which rule won, and the echo backend's JSON (GET) which
version served it. One request per case from a real client in a meshed pod."""
import json


from e2e.l7route.traffic import applied, run

VIP = "10.96.0.10"


def rule(tag: str, backend: str, match: dict) -> dict:
    return {"matches": [match], "backendRefs": [{"name": backend, "port": 80}],
            "filters": [{"type": "ResponseHeaderModifier",
                         "responseHeaderModifier": {"set": [{"name": "x-rule", "value": tag}]}}]}


def prefix(value: str, **more) -> dict:
    return {"path": {"type": "PathPrefix", "value": value}, **more}


def headers(**kv) -> list:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in kv.items()]


def route(name: str, rules: list, created: str | None = None) -> dict:
    meta = {"name": name, "namespace": "default"} | ({"creationTimestamp": created} if created else {})
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta,
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}], "rules": rules}}


ROUTES = [
    route("web-match", [
        rule("exact", "web-v1", {"path": {"type": "Exact", "value": "/api/v1/users"}}),
        rule("long", "web-v1", prefix("/api/v1")),
        rule("long-again", "web-v2", prefix("/api/v1")),          # same match, later rule: never
        rule("short", "web-v1", prefix("/api")),
        rule("regex-users", "web-v2", {"path": {"type": "RegularExpression", "value": "/api/v[0-9]+/users"}}),
        rule("regex-png", "web-v2", {"path": {"type": "RegularExpression", "value": "/static/[a-z]+\\.png"}}),
        rule("regex-any", "web-v1", {"path": {"type": "RegularExpression", "value": "/static/.*"}}),
        rule("method", "web-v2", prefix("/api/v1", method="POST")),
        rule("headers-2", "web-v2", prefix("/api/v1", headers=headers(x_a="1", x_b="1"))),
        rule("headers-1", "web-v1", prefix("/api/v1", headers=headers(x_a="1"))),
        rule("query", "web-v2", prefix("/api/v1", queryParams=[{"name": "debug", "value": "1"}])),
        rule("items", "web-v1", prefix("/api/v1/items/special")),
    ]),
    # the same match as web-match's "long": the alphabetically later route loses
    route("web-match-b", [rule("b-long", "web-v2", prefix("/api/v1"))]),
    # the same match as web-match's "short": the older route wins, though later by name
    route("web-match-old", [rule("old-short", "web-v2", prefix("/api"))], created="2020-01-01T00:00:00Z"),
]
ROUTES_YAML = "---\n".join(json.dumps(r) + "\n" for r in ROUTES)   # JSON is YAML

BOTH = {"x-a": "1", "x-b": "1"}
# (method, path, headers) -> (the rule that must win, the version that answers; None: a POST,
# which the echo answers with the body it got, saying nothing of itself)
CASES = [
    ("GET", "/api/v1/users", {}, "exact", "web-v1"),
    ("GET", "/api/v1/users?debug=1", BOTH, "exact", "web-v1"),            # Exact beats headers and query
    ("POST", "/api/v1/users", {}, "exact", None),                       # ... and method
    ("GET", "/api/v1/orders", {}, "long", "web-v1"),                      # longest prefix; first rule; first route
    ("GET", "/api/v2/users", {}, "old-short", "web-v2"),                  # any prefix beats a regex; oldest route
    ("GET", "/api/v1x", {}, "old-short", "web-v2"),                       # prefixes match whole path elements
    ("GET", "/static/logo.png", {}, "regex-png", "web-v2"),               # the longer expression first
    ("GET", "/static/LOGO.png", {}, "regex-any", "web-v1"),               # full, case-sensitive match
    ("GET", "/static/css/site.css", {}, "regex-any", "web-v1"),
    ("POST", "/api/v1/orders", {}, "method", None),
    ("POST", "/api/v1/orders", BOTH, "method", None),                   # method beats headers
    ("POST", "/api/v1/items/special", {}, "items", None),               # a longer prefix beats method
    ("GET", "/api/v1/orders", BOTH, "headers-2", "web-v2"),               # more headers first
    ("GET", "/api/v1/orders?debug=1", {"x-a": "1"}, "headers-1", "web-v1"),   # headers beat query
    ("GET", "/api/v1/orders", {"X-A": "1"}, "headers-1", "web-v1"),       # header names are case-insensitive
    ("GET", "/api/v1/orders", {"x-a": "2", "x-b": "1"}, "long", "web-v1"),    # values are exact
    ("GET", "/api/v1/orders?debug=1", {}, "query", "web-v2"),
    ("GET", "/api/v1/orders?debug=0", {}, "long", "web-v1"),
]


def attached(routes):
    return {f"default/{r['metadata']['name']}" for r in ROUTES} <= {r["route"] for r in routes}


def test_rules_take_precedence_as_the_gateway_api_orders_them(lab, tmp_path):
    cases = [{"method": m, "path": p, "headers": h} for m, p, h, _, _ in CASES]
    cases.append({"method": "GET", "path": "/other", "headers": {}})
    with applied(lab, ROUTES_YAML, "web", attached, "the precedence routes"):
        recs = run(lab, tmp_path / "match.jsonl", VIP, cases=cases)
    got = [(r["status"], r["rule"], r["pod"]) for r in recs]
    want = [(200, rule_, pod) for *_, rule_, pod in CASES] + [(404, None, None)]   # routes attached, none matches
    wrong = [f"{c['method']} {c['path']} {c['headers']}: got {g}, want {w}"
             for c, g, w in zip(cases, got, want) if g != w]
    assert not wrong, "\n".join(wrong)
    assert "no route of Service default/web matches GET /other" in recs[-1]["body"]
