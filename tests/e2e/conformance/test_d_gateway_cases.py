"""Beyond the mesh suite: cases of the Gateway API's gateway conformance tests
(conformance/tests/httproute-*.go) whose meaning does not depend on a Gateway, replayed on a
mesh Service: each manifest as the suite writes it, with the parentRef turned into the
Service `echo` (port 80) and infra-backend-v1/v2 into echo-v1/echo-v2 (v3 is its own pod).
A user's HTTPRoute means the same at a waypoint as at a gateway (GAMMA)."""
from e2e.conformance.conflab import Case

V3 = "infra-backend-v3"


def route(name: str, rules: str, hostnames: str = "", port: str = ", port: 80") -> str:
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
            f"metadata: {{name: {name}, namespace: gateway-conformance-mesh}}\nspec:\n{hostnames}"
            f"  parentRefs: [{{group: \"\", kind: Service, name: echo{port}}}]\n  rules:\n{rules}")


def to(backend: str) -> str:
    return f"[{{name: {backend}, port: 8080}}]"


def run(lab, manifest: str, cases: list[Case], proto: str = "http") -> None:
    lab.apply(manifest)
    try:
        lab.expect(cases, protocol=proto)
    finally:
        lab.delete(manifest)


def test_HTTPRouteMethodMatching(lab, proto):
    m = route("method-matching", f"""\
  - {{matches: [{{method: POST}}], backendRefs: {to("echo-v1")}}}
  - {{matches: [{{method: GET}}], backendRefs: {to("echo-v2")}}}
  - {{matches: [{{path: {{type: PathPrefix, value: /path1}}, method: GET}}], backendRefs: {to("echo-v1")}}}
  - {{matches: [{{headers: [{{name: version, value: one}}], method: PUT}}], backendRefs: {to("echo-v2")}}}
  - matches: [{{path: {{type: PathPrefix, value: /path2}}, headers: [{{name: version, value: two}}], method: POST}}]
    backendRefs: {to(V3)}
  - matches: [{{path: {{type: PathPrefix, value: /path3}}, method: PATCH}},
              {{path: {{type: PathPrefix, value: /path4}}, headers: [{{name: version, value: three}}], method: DELETE}}]
    backendRefs: {to("echo-v1")}
  - {{matches: [{{path: {{type: PathPrefix, value: /path5}}}}], backendRefs: {to("echo-v1")}}}
  - {{matches: [{{method: PATCH}}], backendRefs: {to("echo-v2")}}}
  - {{matches: [{{headers: [{{name: version, value: four}}]}}], backendRefs: {to(V3)}}}
""")
    run(lab, m, [
        Case(method="POST", backend="echo-v1"), Case(method="GET", backend="echo-v2"),
        Case(method="HEAD", status=404),
        Case(path="/path1", method="GET", backend="echo-v1"),
        Case(method="PUT", headers={"version": "one"}, backend="echo-v2"),
        Case(path="/path2", method="POST", headers={"version": "two"}, backend=V3),
        Case(path="/path3", method="PATCH", backend="echo-v1"),
        Case(path="/path4", method="DELETE", headers={"version": "three"}, backend="echo-v1"),
        Case(method="PUT", status=404), Case(path="/path4", method="DELETE", status=404),
        Case(path="/path5", method="PATCH", backend="echo-v1"),
        Case(method="PATCH", headers={"version": "four"}, backend="echo-v2"),
    ], proto)


def test_HTTPRouteHeaderMatching(lab, proto):
    m = route("header-matching", f"""\
  - {{matches: [{{headers: [{{name: version, value: one}}]}}], backendRefs: {to("echo-v1")}}}
  - {{matches: [{{headers: [{{name: version, value: two}}]}}], backendRefs: {to("echo-v2")}}}
  - matches: [{{headers: [{{name: version, value: two}}, {{name: color, value: orange}}]}}]
    backendRefs: {to("echo-v1")}
  - matches: [{{headers: [{{name: color, value: blue}}]}}, {{headers: [{{name: color, value: green}}]}}]
    backendRefs: {to("echo-v1")}
  - matches: [{{headers: [{{name: color, value: red}}]}}, {{headers: [{{name: color, value: yellow}}]}}]
    backendRefs: {to("echo-v2")}
""")
    run(lab, m, [
        Case(headers={"Version": "one"}, backend="echo-v1"), Case(headers={"Version": "two"}, backend="echo-v2"),
        Case(headers={"Version": "two", "Color": "orange"}, backend="echo-v1"),
        Case(headers={"Version": "two", "Color": "blue"}, backend="echo-v2"),
        Case(headers={"Color": "orange"}, status=404), Case(headers={"Some-Other-Header": "one"}, status=404),
        Case(headers={"Color": "blue"}, backend="echo-v1"), Case(headers={"Color": "green"}, backend="echo-v1"),
        Case(headers={"Color": "red"}, backend="echo-v2"), Case(headers={"Color": "yellow"}, backend="echo-v2"),
        Case(headers={"Color": "purple"}, status=404),
    ], proto)


def test_HTTPRoutePathMatchOrder(lab, proto):
    def rule(kind, value, backend):
        return f"  - {{matches: [{{path: {{type: {kind}, value: {value}}}}}], backendRefs: {to(backend)}}}\n"
    m = route("path-matching-order", rule("Exact", "/match", "echo-v1") + rule("Exact", "/match/exact", "echo-v2")
              + rule("Exact", "/match/exact/one", V3) + rule("PathPrefix", "/match/", V3)
              + rule("PathPrefix", "/match/prefix/", "echo-v1") + rule("PathPrefix", "/match/prefix/one", "echo-v2"))
    run(lab, m, [Case(path="/match/exact/one", backend=V3), Case(path="/match/exact", backend="echo-v2"),
                 Case(path="/match", backend="echo-v1"), Case(path="/match/prefix/one/any", backend="echo-v2"),
                 Case(path="/match/prefix/any", backend="echo-v1"), Case(path="/match/any", backend=V3)], proto)


def test_HTTPRouteOmittedBackendRefs(lab):
    m = route("omitted-backendrefs", f"""\
  - matches: [{{path: {{type: Exact, value: /omitted-no-forward}}}}]
  - {{matches: [{{path: {{type: Exact, value: /empty-no-forward}}}}], backendRefs: []}}
  - {{matches: [{{path: {{type: PathPrefix, value: /}}}}], backendRefs: {to("echo-v1")}}}
""")
    run(lab, m, [Case(path="/forward", backend="echo-v1"), Case(path="/omitted-no-forward", status=500),
                 Case(path="/empty-no-forward", status=500)])


def test_HTTPRouteBackendRequestRedirect_and_BackendURLRewrite(lab, proto):
    def backend_filter(prefix, type_, body):
        return (f"  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n"
                f"    backendRefs: [{{name: echo-v1, port: 8080, filters: [{{type: {type_}, {body}}}]}}]\n")
    m = route("backend-filters", backend_filter(
        "/redirect-full", "RequestRedirect",
        "requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /redirected-full}}")
        + backend_filter("/redirect-prefix", "RequestRedirect",
                         "requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /redirected-prefix}}")
        + backend_filter("/full", "URLRewrite",
                         "urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /rewritten-full}}")
        + backend_filter("/prefix", "URLRewrite",
                         "urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten-prefix}}"))
    run(lab, m, [Case(path="/redirect-full/original", status=302, location="http://echo/redirected-full"),
                 Case(path="/redirect-prefix/original", status=302,
                      location="http://echo/redirected-prefix/original"),
                 Case(path="/full/original", backend="echo-v1", seen_path="/rewritten-full"),
                 Case(path="/prefix/original", backend="echo-v1", seen_path="/rewritten-prefix/original")], proto)


def test_HTTPRouteRedirectPortAndScheme(lab, proto):
    # the suite's listeners on 80 and 8080 are the Service's ports 80 and 8080 here
    def redirect(prefix, spec):
        return (f"  - {{matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}], "
                f"filters: [{{type: RequestRedirect, requestRedirect: {{hostname: example.org{spec}}}}}]}}\n")
    specs = {"/scheme-nil-and-port-nil": "", "/scheme-nil-and-port-80": ", port: 80",
             "/scheme-nil-and-port-8080": ", port: 8080", "/scheme-https-and-port-nil": ", scheme: https",
             "/scheme-https-and-port-443": ", scheme: https, port: 443",
             "/scheme-https-and-port-8443": ", scheme: https, port: 8443"}
    m = route("redirect-port-and-scheme", "".join(redirect(p, spec) for p, spec in specs.items()), port="")
    cases = [("/scheme-nil-and-port-nil", "http://example.org"), ("/scheme-nil-and-port-80", "http://example.org"),
             ("/scheme-nil-and-port-8080", "http://example.org:8080"),
             ("/scheme-https-and-port-nil", "https://example.org"),
             ("/scheme-https-and-port-443", "https://example.org"),
             ("/scheme-https-and-port-8443", "https://example.org:8443")]
    on_8080 = [("/scheme-nil-and-port-nil", "http://example.org:8080"),
               ("/scheme-nil-and-port-80", "http://example.org"), ("/scheme-https-and-port-nil", "https://example.org")]
    run(lab, m, [Case(path=p, status=302, location=loc + p) for p, loc in cases]
        + [Case(path=p, host="echo:8080", status=302, location=loc + p) for p, loc in on_8080], proto)


def test_HTTPRouteRewriteHost(lab, proto):
    mods = ("{type: RequestHeaderModifier, requestHeaderModifier: {"
            "set: [{name: X-Header-Set, value: set-overwrites-values}], "
            "add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], "
            "remove: [X-Header-Remove]}}")
    m = route("rewrite-host", f"""\
  - matches: [{{path: {{type: PathPrefix, value: /one}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{hostname: one.example.org}}}}]
    backendRefs: {to("echo-v1")}
  - filters: [{{type: URLRewrite, urlRewrite: {{hostname: example.org}}}}]
    backendRefs: {to("echo-v2")}
  - matches: [{{path: {{type: PathPrefix, value: /rewrite-host-and-modify-headers}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{hostname: test.example.org}}}}, {mods}]
    backendRefs: {to("echo-v2")}
""", hostnames="  hostnames: [rewrite.example]\n")   # ignored for a Service parent (GAMMA)
    run(lab, m, [
        Case(path="/one", host="rewrite.example", connect="echo", backend="echo-v1", seen_path="/one",
             seen_headers={"Host": "one.example.org"}),
        Case(path="/two", host="rewrite.example", connect="echo", backend="echo-v2", seen_path="/two",
             seen_headers={"Host": "example.org"}),
        Case(path="/rewrite-host-and-modify-headers", host="rewrite.example", connect="echo", backend="echo-v2",
             headers={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"},
             seen_headers={"Host": "test.example.org", "X-Header-Add": "header-val-1",
                           "X-Header-Add-Append": "append-val-1,header-val-2", "X-Header-Set": "set-overwrites-values"},
             absent_headers=["X-Header-Remove"]),
    ], proto)


def test_HTTPRouteResponseHeaderModifier(lab, proto):
    def rule(prefix, modifier):
        return (f"  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n"
                f"    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {modifier}}}]\n"
                f"    backendRefs: {to('echo-v1')}\n")
    m = route("response-header-modifier", rule("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}")
              + rule("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}")
              + rule("/remove", "{remove: [X-Header-Remove]}")
              + rule("/multiple", "{set: [{name: X-Header-Set-1, value: header-set-1}, "
                                  "{name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, "
                                  "value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, "
                                  "{name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, "
                                  "X-Header-Remove-2]}")
              + rule("/case-insensitivity", "{set: [{name: X-Header-Set, value: header-set}], add: [{name: "
                                            "X-Header-Add, value: header-add}, {name: x-lowercase-add, value: "
                                            "lowercase-add}, {name: X-UPPERCASE-ADD, value: uppercase-add}], "
                                            "remove: [X-Header-Remove]}"))

    def c(path, backend_sets: dict, want: dict, absent=()):
        knob = ",".join(f"{k}:{v}" for k, v in backend_sets.items())   # the echo answers with these
        return Case(path=path, headers={"X-Echo-Set-Header": knob}, backend="echo-v1", response_headers=want,
                    absent_response_headers=list(absent))
    run(lab, m, [
        c("/set", {"Some-Other-Header": "val"}, {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
        c("/set", {"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
          {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
        c("/add", {"Some-Other-Header": "val"}, {"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}),
        c("/add", {"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
          {"Some-Other-Header": "val", "X-Header-Add": "some-other-value,add-appends-values"}),
        c("/remove", {"X-Header-Remove": "val"}, {}, ["X-Header-Remove"]),
        c("/multiple", {"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                        "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val",
                        "X-Header-Remove-1": "val"},
          {"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2", "X-Header-Add-1": "header-add-1",
           "X-Header-Add-2": "add-val-2,header-add-2", "X-Header-Add-3": "header-add-3",
           "Another-Header": "another-header-val"}, ["X-Header-Remove-1", "X-Header-Remove-2"]),
        c("/case-insensitivity", {"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                                  "x-header-remove": "original-val-remove", "Another-Header": "another-header-val"},
          {"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add",
           "X-Lowercase-Add": "lowercase-add", "X-Uppercase-Add": "uppercase-add",
           "Another-Header": "another-header-val"}, ["x-header-remove", "X-Header-Remove"]),
    ], proto)
