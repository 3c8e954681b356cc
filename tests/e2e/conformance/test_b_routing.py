"""Gateway API mesh conformance, matching and backends (conformance/tests/mesh/httproute-
matching.go, -query-param-matching.go, -named-rule.go, -weight.go, grpcroute-*.go): the
suite's requests and expectations, from its client pod echo-v1, through the mesh."""
from e2e.conformance.conflab import Case, weights_within


def _to(path: str, backend: str, headers: dict | None = None) -> Case:
    return Case(path=path, headers=headers or {}, backend=backend, seen_path=path)


def test_MeshHTTPRouteMatching(applied, proto):
    with applied("httproute-matching.yaml") as lab:
        lab.expect([
            _to("/", "echo-v1"), _to("/example", "echo-v1"), _to("/", "echo-v1", {"Version": "one"}),
            _to("/v2", "echo-v2"), _to("/v2/example", "echo-v2"), _to("/", "echo-v2", {"Version": "two"}),
            _to("/v2/", "echo-v2"), _to("/v2example", "echo-v1"), _to("/foo/v2/example", "echo-v1"),
        ], protocol=proto)


def test_MeshHTTPRouteQueryParamMatching(applied, proto):
    with applied("httproute-query-param-matching.yaml") as lab:
        lab.expect([
            _to("/?animal=whale", "echo-v1"), _to("/?animal=dolphin", "echo-v2"),
            _to("/?animal=whale&otherparam=irrelevant", "echo-v1"), _to("/?animal=dolphin&color=yellow", "echo-v2"),
            Case(path="/?color=blue", status=404), Case(path="/?animal=dog", status=404),
            Case(path="/?animal=whaledolphin", status=404), Case(path="/", status=404),
            # combinations with core match types
            _to("/path1?animal=whale", "echo-v1"), _to("/?animal=whale", "echo-v2", {"version": "one"}),
            # (cond1 AND cond2) OR (cond3 AND cond4 AND cond5)
            _to("/path3?animal=shark", "echo-v1"), _to("/path4?animal=kraken", "echo-v1", {"version": "three"}),
            Case(path="/?animal=shark", status=404), Case(path="/path4?animal=kraken", status=404),
            # precedence: a path match beats a query match
            _to("/path5?animal=hydra", "echo-v1"),
        ], protocol=proto)


def test_MeshHTTPRouteNamedRule(applied):
    # (the suite expects path "/named" for the /unnamed request too, a slip its mesh client
    # never checks; the backend sees the path sent, as the spec says)
    with applied("httproute-named-rule.yaml") as lab:
        lab.expect([_to("/named", "echo-v1"), _to("/unnamed", "echo-v2")])
        # the rule's name is shown where the waypoint lists its routes
        rows = [r for r in lab.waypoint_routes() if r.get("route") == "gateway-conformance-mesh/mesh-http-named-rules"
                and r["parent"] == "gateway-conformance-mesh/echo:80"]
        assert [(r["rule"], r.get("name")) for r in rows] == [(0, "named-rule"), (1, None)], rows


def test_MeshHTTPRouteWeight(applied):
    with applied("httproute-weight.yaml") as lab:
        case = Case(path="/", host="echo", status=200)
        lab.expect([case])
        weights_within(lab, case, {"echo-v1": 0.7, "echo-v2": 0.3})


def test_MeshGRPCRouteWeight(applied):
    with applied("grpcroute-weight.yaml") as lab:
        case = Case(protocol="grpc", host="echo:7070", path="", status=200)
        lab.expect([case])
        # weight 0 (echo-v3, a Service that does not even exist) gets nothing
        weights_within(lab, case, {"echo-v1": 0.7, "echo-v2": 0.3})


def test_MeshGRPCRouteRequestHeaderModifier(applied):
    def grpc(test_case: str, backend: str, sent: dict, seen: dict, absent=()) -> Case:
        return Case(protocol="grpc", host="echo:7070", path="", headers={"x-test-case": test_case, **sent},
                    status=200, backend=backend, seen_headers={"x-test-case": test_case, **seen},
                    absent_headers=list(absent))
    with applied("grpcroute-request-header-modifier.yaml") as lab:
        lab.expect([
            grpc("set", "echo-v1", {"x-header-set": "this-value-should-be-overwritten"},
                 {"x-header-set": "set-overwrites-values"}),
            grpc("add", "echo-v1", {"x-header-add": "this-value-should-be-appended"},
                 {"x-header-add": "this-value-should-be-appended,add-appends-values"}),
            grpc("remove", "echo-v1", {"x-header-remove": "this-should-be-removed"}, {}, ["x-header-remove"]),
            grpc("multi", "echo-v2", {"x-header-set-2": "set-header-2", "x-header-add-2": "add-header-2",
                                      "x-header-remove-2": "should-be-removed-2"},
                 {"x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2",
                  "x-header-add-1": "header-add-1", "x-header-add-2": "add-header-2,header-add-2"},
                 ["x-header-remove-1", "x-header-remove-2"]),
        ])
