"""Filters on a backendRef (HTTPBackendRef.filters; implementation-specific in the spec): all
four HTTP filters apply when that backend is picked, as the Gateway API conformance tests
HTTPRouteBackendRequestRedirect and HTTPRouteBackendURLRewrite (gateway variants; their
manifests with the Service as parent) and the header modifiers' backend variant expect."""
from meshcore.resources import parse_documents
from waypoint.http.events import Request
from waypoint.routing import RouteTable

NS = "mesh"
SERVICES = {(NS, n): [80, 8080] for n in ("echo", "echo-v1", "echo-v2")}

ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: backend-filters, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /redirect-full}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /redirected-full}}}]
  - matches: [{path: {type: PathPrefix, value: /redirect-prefix}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /redirected-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /rewritten-full}}}]
  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-rule, value: prefix}]}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      weight: 1
      filters:
      - type: URLRewrite
        urlRewrite: {hostname: v1.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten-prefix}}
    - name: echo-v2
      port: 8080
      weight: 1
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301}}]
"""


def decide(target: str, pick=lambda: 0.0):
    res = parse_documents(ROUTE, "routes.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    return RouteTable(res.resources, SERVICES).decide(Request("GET", target, "echo", ()), NS, "echo", 80, NS, pick)


def test_a_backend_redirect_answers_instead_of_forwarding():
    d = decide("/redirect-full/original")
    assert (d.action, d.status, d.location) == ("redirect", 302, "http://echo/redirected-full")
    d = decide("/redirect-prefix/original?x=1")
    assert (d.action, d.status, d.location) == ("redirect", 302, "http://echo/redirected-prefix/original?x=1")


def test_a_backend_rewrite_changes_what_that_backend_sees():
    d = decide("/full/original")
    assert (d.action, d.backend.name, d.request.target) == ("forward", "echo-v1", "/rewritten-full")
    d = decide("/prefix/original?q=2", pick=lambda: 0.0)       # echo-v1: its own rewrite
    assert (d.action, d.backend.name, d.request.target, d.request.authority) == (
        "forward", "echo-v1", "/rewritten-prefix/original?q=2", "v1.example")
    assert [m.set for m in d.response_headers] == [(("x-rule", "prefix"),)]
    d = decide("/prefix/original", pick=lambda: 0.99)          # echo-v2: its redirect, with the rule's headers
    assert (d.action, d.status, d.location) == ("redirect", 301, "http://example.org/prefix/original")
    assert [m.set for m in d.response_headers] == [(("x-rule", "prefix"),)]
