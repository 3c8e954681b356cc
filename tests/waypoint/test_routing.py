"""Route selection, table-style, with the gateway-api conformance/tests/mesh cases translated
(the YAML is theirs with the namespace renamed; the expectations are their ExpectedResponses)."""
import itertools
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from meshcore.resources import parse_documents
from waypoint.http.events import Request
from waypoint.routing import RouteTable, apply_response_headers, choose_backend, prefix_matches
from waypoint.rewrite import replace_prefix

NS = "mesh"
SERVICES = {(NS, n): [80, 8080, 7070] for n in ("echo", "echo-v1", "echo-v2", "echo-v3")}
SERVICES[("consumer", "other")] = [80]


def table(yaml_text, services=SERVICES):
    res = parse_documents(yaml_text, "routes.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    return RouteTable(res.resources, services)


def req(target="/", method="GET", headers=(), authority="echo", **kw):
    return Request(method, target, authority, tuple((k.lower(), v) for k, v in headers), **kw)


def decide(t, r, service="echo", port=80, client=NS, pick=lambda: 0.0):
    return t.decide(r, NS, service, port, client, pick)


def route(name, rules, parent="{group: \"\", kind: Service, name: echo, port: 80}", ns=NS, extra=""):
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
            f"metadata: {{name: {name}, namespace: {ns}{extra}}}\nspec:\n  parentRefs: [{parent}]\n  rules:\n{rules}---\n")


MATCHING = route("mesh-matching", """\
  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
""")


@pytest.mark.parametrize("target,headers,backend", [
    ("/", (), "echo-v1"), ("/example", (), "echo-v1"), ("/", [("Version", "one")], "echo-v1"),
    ("/v2", (), "echo-v2"), ("/v2/example", (), "echo-v2"), ("/", [("Version", "two")], "echo-v2"),
    ("/v2/", (), "echo-v2"), ("/v2example", (), "echo-v1"), ("/foo/v2/example", (), "echo-v1"),
])
def test_mesh_httproute_matching(target, headers, backend):
    d = decide(table(MATCHING), req(target, headers=headers))
    assert d.action == "forward" and d.backend.name == backend and d.backend.port == 8080


QUERY = route("mesh-query-param-matching", """\
  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: dolphin}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches:
    - {path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}
    - path: {type: PathPrefix, value: /path4}
      headers: [{name: version, value: three}]
      queryParams: [{name: animal, value: kraken}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path5}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: hydra}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
""")


@pytest.mark.parametrize("target,headers,expect", [
    ("/?animal=whale", (), "echo-v1"), ("/?animal=dolphin", (), "echo-v2"),
    ("/?animal=whale&otherparam=irrelevant", (), "echo-v1"), ("/?animal=dolphin&color=yellow", (), "echo-v2"),
    ("/?color=blue", (), 404), ("/?animal=dog", (), 404), ("/?animal=whaledolphin", (), 404), ("/", (), 404),
    ("/path1?animal=whale", (), "echo-v1"), ("/?animal=whale", [("version", "one")], "echo-v2"),
    ("/path3?animal=shark", (), "echo-v1"), ("/path4?animal=kraken", [("version", "three")], "echo-v1"),
    ("/?animal=shark", (), 404), ("/path4?animal=kraken", (), 404),
    ("/path5?animal=hydra", (), "echo-v1"),
])
def test_mesh_query_param_matching(target, headers, expect):
    d = decide(table(QUERY), req(target, headers=headers))
    if expect == 404:
        assert d.action == "respond" and d.status == 404 and "no route of Service mesh/echo" in d.reason
    else:
        assert d.action == "forward" and d.backend.name == expect


def test_mesh_split_and_ports():
    split = route("mesh-split", """\
  - matches: [{path: {type: Exact, value: /v1}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 80}]
""", parent="{group: \"\", kind: Service, name: echo}")
    t = table(split)
    assert decide(t, req("/v1")).backend.name == "echo-v1" and decide(t, req("/v2")).backend.name == "echo-v2"
    assert decide(t, req("/v1/")).status == 404
    # mesh-ports: a route on port 80 only; a request to 8080 is not routed (goes to the Service itself).
    ports = route("mesh-split-v1", """\
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}}]
    backendRefs: [{name: echo-v1, port: 80}]
""", parent="{group: \"\", kind: Service, name: echo-v1, port: 80}") + route("mesh-split-v2", """\
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}}]
    backendRefs: [{name: echo-v2, port: 80}]
""", parent="{group: \"\", kind: Service, name: echo-v2}")
    t = table(ports)
    d = decide(t, req(authority="echo-v1"), service="echo-v1", port=80)
    assert apply_response_headers((("x-header-set", "old"),), d.response_headers) == (("x-header-set", "v1"),)
    assert decide(t, req(authority="echo-v1:8080"), service="echo-v1", port=8080).action == "default"
    d = decide(t, req(authority="echo-v2:8080"), service="echo-v2", port=8080)
    assert d.action == "forward" and apply_response_headers((), d.response_headers) == (("x-header-set", "v2"),)


def test_mesh_consumer_route_applies_only_to_its_namespace():
    consumer = route("mesh-echo-add-header", """\
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
    backendRefs: [{name: echo-v1, namespace: mesh, port: 80}]
""", parent="{group: \"\", kind: Service, name: echo-v1, namespace: mesh}", ns="consumer")
    producer = route("producer", """\
  - backendRefs: [{name: echo-v2, port: 80}]
""", parent="{group: \"\", kind: Service, name: echo-v1}")
    t = table(consumer)
    d = decide(t, req(), service="echo-v1", client="consumer")
    assert d.backend.name == "echo-v1" and d.backend.namespace == "mesh" and d.response_headers
    assert decide(t, req(), service="echo-v1", client=NS).action == "default"   # producer side: no route
    t = table(consumer + producer)
    assert decide(t, req(), service="echo-v1", client="consumer").backend.name == "echo-v1"
    assert decide(t, req(), service="echo-v1", client="third").backend.name == "echo-v2"
    # A consumer route's parent must name the namespace: without it, it points at consumer/echo-v1.
    t = table(consumer.replace(", namespace: mesh}]\n  rules", "}]\n  rules"))
    assert decide(t, req(), service="echo-v1", client="consumer").action == "default"


def test_precedence_exact_prefix_regex_method_headers_query():
    rules = """\
  - matches: [{path: {type: RegularExpression, value: "/a.*"}}]
    backendRefs: [{name: echo-v3, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /a/b}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /a/b/c}}]
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /a/b}, method: POST}]
    backendRefs: [{name: echo-v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /a/b}, headers: [{name: x, value: "1"}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /a/b}, queryParams: [{name: q, value: "1"}],
               headers: [{name: x, value: "1"}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
"""
    t = table(route("p", rules))
    pick = lambda r: (decide(t, r).backend.name, decide(t, r).backend.port)
    assert pick(req("/a/b/c", method="POST")) == ("echo", 80)          # exact beats everything
    assert pick(req("/a/b/d")) == ("echo-v1", 80)                       # longest prefix
    assert pick(req("/a/x")) == ("echo-v2", 80)                         # prefix beats regex
    assert pick(req("/ab")) == ("echo-v3", 80)                          # only the regex matches
    assert pick(req("/a/b/d", method="POST", headers=[("x", "1")])) == ("echo-v3", 8080)   # method beats headers
    assert pick(req("/a/b/d", headers=[("x", "1")])) == ("echo-v2", 8080)
    assert pick(req("/a/b/d?q=1", headers=[("X", "1")])) == ("echo-v1", 8080)             # more matches win


def test_ties_oldest_route_then_name_then_rule_order():
    a = route("b-route", "  - backendRefs: [{name: echo-v1, port: 80}]\n",
              extra=", creationTimestamp: '2024-01-02T00:00:00Z'")
    b = route("c-route", "  - backendRefs: [{name: echo-v2, port: 80}]\n",
              extra=", creationTimestamp: '2024-01-01T00:00:00Z'")
    c = route("a-route", "  - backendRefs: [{name: echo-v3, port: 80}]\n")
    assert decide(table(a + b + c), req()).backend.name == "echo-v2"    # oldest
    assert decide(table(a + c), req()).backend.name == "echo-v1"        # a timestamp is older than none
    assert decide(table(c + route("z", "  - backendRefs: [{name: echo, port: 80}]\n")), req()).backend.name == "echo-v3"
    same = route("r", "  - backendRefs: [{name: echo-v1, port: 80}]\n  - backendRefs: [{name: echo-v2, port: 80}]\n")
    assert decide(table(same), req()).backend.name == "echo-v1" and decide(table(same), req()).rule == 0


def test_header_matching_rules():
    t = table(route("h", """\
  - matches: [{headers: [{name: X-Canary, value: "true"}, {name: x-canary, value: "false"}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{headers: [{name: x-user, type: RegularExpression, value: "ann|bob"}]}]
    backendRefs: [{name: echo-v3, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
"""))
    name = lambda h: decide(t, req(headers=h)).backend.name
    assert name([("x-canary", "true")]) == "echo-v2"         # names fold; the second entry is ignored
    assert name([("x-canary", "false")]) == "echo-v1"
    assert name([("x-user", "bob")]) == "echo-v3" and name([("x-user", "bobby")]) == "echo-v1"  # full match
    assert name([("x-canary", "true"), ("x-canary", "x")]) == "echo-v1"  # repeated: "true,x"


def test_weights_and_invalid_backends():
    t = table(route("w", """\
  - matches: [{path: {type: Exact, value: /split}}]
    backendRefs: [{name: echo-v1, port: 8080, weight: 70}, {name: echo-v2, port: 8080, weight: 30},
                  {name: echo-v3, port: 8080, weight: 0}]
  - matches: [{path: {type: Exact, value: /zero}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 0}]
  - matches: [{path: {type: Exact, value: /missing}}]
    backendRefs: [{name: echo-v1, port: 80}, {name: gone, port: 80}]
  - matches: [{path: {type: Exact, value: /none}}]
  - matches: [{path: {type: Exact, value: /badport}}]
    backendRefs: [{name: echo-v1, port: 9}]
"""))
    picks = [i / 1000 for i in range(1000)]
    got = Counter(decide(t, req("/split"), pick=lambda p=p: p).backend.name for p in picks)
    assert got == {"echo-v1": 700, "echo-v2": 300}                      # exact shares; weight 0 never
    d = decide(t, req("/zero"))
    assert (d.action, d.status) == ("respond", 500) and "weight 0" in d.reason
    shares = Counter(decide(t, req("/missing"), pick=lambda p=p: p).status for p in picks)
    assert shares == {0: 500, 500: 500}                                 # the missing Service's half gets 500
    assert "backend Service mesh/gone does not exist" in decide(t, req("/missing"), pick=lambda: 0.9).reason
    assert decide(t, req("/none")).status == 500 and "no backendRefs" in decide(t, req("/none")).reason
    assert "has no port 9" in decide(t, req("/badport")).reason
    rng = iter(itertools.cycle([0.1, 0.5, 0.95]))
    assert choose_backend(()) is None and choose_backend(t.routes[0].spec.rules[0].backend_refs, lambda: next(rng))


def test_request_header_modifier_conformance():
    t = table(route("m", """\
  - matches: [{path: {type: PathPrefix, value: /set}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /add}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /remove}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}]
    backendRefs: [{name: echo-v1, port: 8080, filters: [{type: RequestHeaderModifier,
                  requestHeaderModifier: {set: [{name: x-backend, value: v1}]}}]}]
"""))
    h = lambda target, headers: decide(t, req(target, headers=headers)).request.headers
    assert h("/set", [("X-Header-Set", "some-other-value"), ("Some-Other-Header", "val")]) == (
        ("some-other-header", "val"), ("x-header-set", "set-overwrites-values"))
    assert h("/add", [("X-Header-Add", "some-other-value")]) == (
        ("x-header-add", "some-other-value"), ("x-header-add", "add-appends-values"))
    assert h("/remove", [("X-Header-Remove", "val"), ("x-header-remove", "v2")]) == (("x-backend", "v1"),)


@pytest.mark.parametrize("target,expected", [
    ("/prefix/one/two", "/one/two"), ("/strip-prefix/three", "/three"), ("/strip-prefix", "/"),
    ("/full/one/two", "/one"), ("/prefix/one/two?x=1", "/one/two?x=1"),
])
def test_mesh_rewrite_path(target, expected):
    t = table(route("mesh-rewrite-path", """\
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten, path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
"""))
    d = decide(t, req(target, headers=[("host", "echo")]))
    assert d.request.target == expected
    if target.startswith("/full"):
        assert d.request.authority == "rewritten" and d.request.header("host") == "rewritten"


@pytest.mark.parametrize("path,prefix,replacement,out", [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"), ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"), ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"), ("/foo/", "/foo", "/xyz", "/xyz/"), ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"), ("/foo", "/foo", "", "/"), ("/foo/", "/foo", "/", "/"), ("/foo", "/foo", "/", "/"),
])
def test_replace_prefix_match_table_from_the_spec(path, prefix, replacement, out):
    assert replace_prefix(path, prefix, replacement) == out


@pytest.mark.parametrize("target,status,location", [
    ("/original-prefix/lemon", 302, "http://echo/replacement-prefix/lemon"),
    ("/full/path/original", 302, "http://echo/full-path-replacement"),
    ("/path-and-host", 302, "http://example.org/replacement-prefix"),
    ("/path-and-status", 301, "http://echo/replacement-prefix"),
    ("/port", 302, "http://echo:8083/port"), ("/port-and-host", 302, "http://example.org:8083/port-and-host"),
    ("/scheme", 302, "https://echo/scheme"), ("/scheme-and-status", 301, "https://echo/scheme-and-status"),
    ("/status303", 303, "http://echo/status303?q=1"), ("/status307", 307, "http://echo/status307"),
    ("/status308", 308, "http://echo/status308"),
])
def test_mesh_redirects(target, status, location):
    t = table(route("mesh-redirect", """\
  - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]
  - matches: [{path: {type: PathPrefix, value: /path-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /path-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /status303}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303}}]
  - matches: [{path: {type: PathPrefix, value: /status307}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]
  - matches: [{path: {type: PathPrefix, value: /status308}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308}}]
"""))
    d = decide(t, req(target + ("?q=1" if "303" in target else ""), authority="echo"))
    assert (d.action, d.status, d.location) == ("redirect", status, location)
    # The listener port (the Service port dialled) shows when it is not the scheme's default.
    d = t.decide(req("/scheme-and-status", authority="echo:8080"), NS, "echo", 80, NS)
    assert d.location == "https://echo/scheme-and-status"


GRPC = """apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-request-header-modifier, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - matches: [{headers: [{name: x-test-case, value: set}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-header-set, value: set-overwrites-values}]}}]
    backendRefs: [{name: echo-v1, port: 7070}]
  - matches: [{method: {service: grpc.Echo, method: Ping}}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches: [{method: {method: Ping}}]
    backendRefs: [{name: echo-v3, port: 7070}]
  - matches: [{method: {type: RegularExpression, service: "grpc\\\\..*"}}]
    backendRefs: [{name: echo, port: 7070}]
---
"""


def grpc(path, headers=()):
    return req(path, "POST", (("content-type", "application/grpc"),) + tuple(headers), authority="echo:7070",
               http_version="2")


def test_grpc_route_matching_and_header_modifier():
    t = table(GRPC + route("plain", "  - backendRefs: [{name: echo-v1, port: 80}]\n",
                           parent="{group: \"\", kind: Service, name: echo, port: 7070}"))
    g = lambda r: decide(t, r, port=7070)
    d = g(grpc("/other.Svc/Call", [("x-test-case", "set"), ("x-header-set", "old")]))
    assert d.backend.name == "echo-v1" and d.request.header("x-header-set") == "set-overwrites-values"
    # The longest matching service outranks header matches.
    assert g(grpc("/grpc.Echo/Ping", [("x-test-case", "set")])).backend.name == "echo-v2"
    assert g(grpc("/grpc.Echo/Ping")).backend.name == "echo-v2"          # service+method beats method only
    assert g(grpc("/other.Svc/Ping")).backend.name == "echo-v3"
    assert g(grpc("/grpc.Other/Call")).backend.name == "echo"
    assert g(grpc("/other.Svc/Call")).status == 404
    assert g(req("/grpc.Echo/Ping")).backend.name == "echo-v1" and g(req("/")).route.kind == "HTTPRoute"


def test_grpc_route_weights():
    t = table(GRPC.replace("""  - matches: [{headers: [{name: x-test-case, value: set}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-header-set, value: set-overwrites-values}]}}]
    backendRefs: [{name: echo-v1, port: 7070}]""", """  - backendRefs: [{name: echo-v1, port: 7070, weight: 70}, {name: echo-v2, port: 7070, weight: 30},
                  {name: echo-v3, port: 7070, weight: 0}]
    matches: [{method: {service: svc}}]"""))
    got = Counter(decide(t, grpc("/svc/M"), port=7070, pick=lambda p=p: p / 100).backend.name for p in range(100))
    assert got == {"echo-v1": 70, "echo-v2": 30}


def test_grpc_rule_without_matches_catches_the_rest_after_specific_rules():
    t = table(GRPC.replace("  rules:\n", "  rules:\n  - backendRefs: [{name: echo-v3, port: 80}]\n"))
    assert decide(t, grpc("/grpc.Echo/Ping"), port=7070).backend.name == "echo-v2"
    d = decide(t, grpc("/x.Y/Z"), port=7070)
    assert (d.backend.name, d.backend.port, d.rule) == ("echo-v3", 80, 0)


@pytest.mark.parametrize("prefix,path,ok", [("/abc", "/abc", True), ("/abc", "/abc/", True), ("/abc", "/abc/d", True),
                                            ("/abc", "/abcd", False), ("/abc/", "/abc", True), ("/", "/x", True)])
def test_prefix_is_element_wise(prefix, path, ok):
    assert prefix_matches(prefix, path) is ok


def test_section_name_is_the_service_port_name():
    named = {(NS, "echo"): {80: "http", 8080: "admin"}, (NS, "echo-v1"): [80]}
    t = table(route("by-name", "  - backendRefs: [{name: echo-v1, port: 80}]\n",
                    parent="{group: \"\", kind: Service, name: echo, sectionName: http}"), named)
    assert decide(t, req()).action == "forward"
    assert decide(t, req(), port=8080).action == "default"
    t = table(route("both", "  - backendRefs: [{name: echo-v1, port: 80}]\n",
                    parent="{group: \"\", kind: Service, name: echo, sectionName: http, port: 8080}"), named)
    assert decide(t, req()).action == "default" and decide(t, req(), port=8080).action == "default"


def test_mesh_frontend_the_service_dialled_decides_not_the_host_header():
    t = table(route("mesh-split-v1", """\
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
    backendRefs: [{name: echo-v2, port: 80}]
""", parent="{group: \"\", kind: Service, name: echo-v2}"))
    # MeshFrontendHostname: dialling echo-v2 with Host echo-v1 still gets echo-v2's routes, and the reverse not.
    d = decide(t, req(authority="echo-v1", headers=[("host", "echo-v1")]), service="echo-v2")
    assert d.action == "forward" and apply_response_headers((), d.response_headers) == (("x-header-set", "set"),)
    assert decide(t, req(authority="echo-v2", headers=[("host", "echo-v2")]), service="echo-v1").action == "default"


def test_mesh_named_rules():
    t = table(route("mesh-http-named-rules", """\
  - name: named-rule
    matches: [{path: {type: PathPrefix, value: /named}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /unnamed}}]
    backendRefs: [{name: echo-v2, port: 8080}]
"""))
    assert decide(t, req("/named")).backend.name == "echo-v1" and decide(t, req("/unnamed")).backend.name == "echo-v2"
    assert t.routes[0].spec.rules[0].name == "named-rule" and decide(t, req("/named")).rule == 0


@settings(max_examples=300, deadline=None)
@given(path=st.text(alphabet="/abv2.%?=&x", max_size=20), version=st.sampled_from(["one", "two", "x", None]),
       method=st.sampled_from(["GET", "POST", "DELETE"]))
def test_any_request_gets_a_decision_and_matches_follow_the_rules(path, version, method):
    t = table(MATCHING + QUERY.replace("mesh-query-param-matching", "q2").replace("port: 80}", "port: 8080}"))
    headers = [("version", version)] if version else []
    d = decide(t, req("/" + path, method=method, headers=headers))
    assert d.action == "forward" and d.backend.name in ("echo-v1", "echo-v2")   # "/" catches everything
    if version == "two" or prefix_matches("/v2", ("/" + path).split("?")[0]):
        assert d.backend.name == "echo-v2"
