"""Gateway API mesh conformance, filters (conformance/tests/mesh/httproute-redirect-*.go,
-30x-redirect.go, -rewrite-path.go, -request-header-modifier.go): the suite's requests from
its client pod echo-v1, through the mesh. The suite's mesh client checks a redirect's status
only; here the whole Location is checked as the spec builds it (scheme, host, the port left
out when it is the scheme's well-known one, the path)."""
import pytest

from e2e.conformance.conflab import Case


def _redirect(path: str, status: int, location: str) -> Case:
    return Case(path=path, host="echo", status=status, location=location)


@pytest.mark.parametrize("code,path", [(303, "/redirect"), (307, "/temporary"), (308, "/permanent")])
def test_MeshHTTPRoute30xRedirect(applied, code, path, proto):
    # MeshHTTPRoute303Redirect, MeshHTTPRoute307Redirect, MeshHTTPRoute308Redirect (provisional)
    with applied(f"httproute-{code}-redirect.yaml") as lab:
        lab.expect([_redirect(path, code, f"http://echo{path}"),
                    _redirect(path + "/x?q=1", code, f"http://echo{path}/x?q=1")], protocol=proto)


def test_MeshHTTPRouteRedirectHostAndStatus(applied, proto):
    with applied("httproute-redirect-host-and-status.yaml") as lab:
        lab.expect([_redirect("/hostname-redirect", 302, "http://example.org/hostname-redirect"),
                    _redirect("/host-and-status", 301, "http://example.org/host-and-status"),
                    # parentRef port 80: the Service's port 8080 has no route, and is not redirected
                    Case(path="/hostname-redirect", host="echo:8080", status=200, backend="echo-",
                         seen_path="/hostname-redirect", absent_response_headers=["location"])], protocol=proto)


def test_MeshHTTPRouteRedirectPath(applied, proto):
    with applied("httproute-redirect-path.yaml") as lab:
        lab.expect([
            _redirect("/original-prefix/lemon", 302, "http://echo/replacement-prefix/lemon"),
            _redirect("/full/path/original", 302, "http://echo/full-path-replacement"),
            _redirect("/path-and-host", 302, "http://example.org/replacement-prefix"),
            _redirect("/path-and-status", 301, "http://echo/replacement-prefix"),
            _redirect("/full-path-and-host", 302, "http://example.org/replacement-full"),
            _redirect("/full-path-and-status", 301, "http://echo/replacement-full"),
        ], protocol=proto)


def test_MeshHTTPRouteRedirectPort(applied, proto):
    with applied("httproute-redirect-port.yaml") as lab:
        lab.expect([
            _redirect("/port", 302, "http://echo:8083/port"),
            _redirect("/port-and-host", 302, "http://example.org:8083/port-and-host"),
            _redirect("/port-and-status", 301, "http://echo:8083/port-and-status"),
            _redirect("/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status"),
        ], protocol=proto)


def test_MeshHTTPRouteSchemeRedirect(applied, proto):
    with applied("httproute-redirect-scheme.yaml") as lab:
        lab.expect([
            _redirect("/scheme", 302, "https://echo/scheme"),
            _redirect("/scheme-and-host", 302, "https://example.org/scheme-and-host"),
            _redirect("/scheme-and-status", 301, "https://echo/scheme-and-status"),
            _redirect("/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status"),
        ], protocol=proto)


def test_MeshHTTPRouteRewritePath(applied, proto):
    mods = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1", "X-Header-Set": "set-val"}
    modded = {"X-Header-Add": "header-val-1", "X-Header-Add-Append": "append-val-1,header-val-2",
              "X-Header-Set": "set-overwrites-values"}
    with applied("httproute-rewrite-path.yaml") as lab:
        lab.expect([
            Case(path="/prefix/one/two", backend="echo-v1", seen_path="/one/two"),
            Case(path="/strip-prefix/three", backend="echo-v1", seen_path="/three"),
            Case(path="/strip-prefix", backend="echo-v1", seen_path="/"),
            Case(path="/full/one/two", backend="echo-v1", seen_path="/one"),
            Case(path="/full/rewrite-path-and-modify-headers/test", headers=mods, backend="echo-v1",
                 seen_path="/test", seen_headers=modded, absent_headers=["X-Header-Remove"]),
            Case(path="/prefix/rewrite-path-and-modify-headers/one", headers=mods, backend="echo-v1",
                 seen_path="/prefix/one", seen_headers=modded, absent_headers=["X-Header-Remove"]),
        ], protocol=proto)


def _header_cases() -> list[Case]:
    """MeshHTTPRouteRequestHeaderModifier's cases (also the backend-filter variant's)."""
    def c(path, sent, seen, absent=()):
        return Case(path=path, headers=sent, backend="echo-v1", seen_path=path, seen_headers=seen,
                    absent_headers=list(absent))
    return [
        c("/set", {"Some-Other-Header": "val"}, {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
        c("/set", {"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
          {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
        c("/add", {"Some-Other-Header": "val"}, {"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}),
        c("/add", {"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
          {"Some-Other-Header": "val", "X-Header-Add": "some-other-value,add-appends-values"}),
        c("/remove", {"X-Header-Remove": "val"}, {}, ["X-Header-Remove"]),
        c("/multiple", {"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                        "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val"},
          {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2", "X-Header-Add-1": "header-add-1",
           "X-Header-Add-2": "add-val-2,header-add-2", "X-Header-Add-3": "header-add-3",
           "Another-Header": "another-header-val"}, ["X-Header-Remove-1", "X-Header-Remove-2"]),
        c("/case-insensitivity", {"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                                  "x-header-remove": "original-val-remove", "Another-Header": "another-header-val"},
          {"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add",
           "Another-Header": "another-header-val"}, ["x-header-remove", "X-Header-Remove"]),
    ]


def test_MeshHTTPRouteRequestHeaderModifier(applied, proto):
    with applied("httproute-request-header-modifier.yaml") as lab:
        lab.expect(_header_cases(), protocol=proto)


def test_MeshHTTPRouteBackendRequestHeaderModifier(applied, proto):
    with applied("httproute-request-header-modifier-backend.yaml") as lab:
        lab.expect(_header_cases(), protocol=proto)


# Beyond the suite (its Services are dialled on port 80 only, where the listener port and
# http's well-known port coincide): the spec's port rules for a Location, on a route
# attached to every port of the Service. No port in the filter: the scheme's well-known port
# when the filter sets a scheme, else the listener port, which for a mesh Service is the port
# dialled; 80 for http and 443 for https are left out.
EVERY_PORT = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: redirect-every-port, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /to-http}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: http, port: 80}}]
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    backendRefs: [{name: echo-v2, port: 8080}]
"""


def test_redirect_ports_follow_the_port_dialled(lab, proto):
    lab.apply(EVERY_PORT)
    try:
        lab.expect([
            Case(path="/host/a?b=c", host="echo", status=302, location="http://example.org/host/a?b=c"),
            Case(path="/host/a", host="echo:8080", status=302, location="http://example.org:8080/host/a"),
            Case(path="/scheme", host="echo:8080", status=302, location="https://echo/scheme"),
            Case(path="/to-http", host="echo:8080", status=302, location="http://echo/to-http"),
            # URLRewrite: the backend sees the new Host and path
            Case(path="/rewrite/x?q=1", host="echo:8080", backend="echo-v2", seen_path="/x?q=1",
                 seen_headers={"Host": "rewritten.example"}),
        ], protocol=proto)
    finally:
        lab.delete(EVERY_PORT)
