"""Gateway API mesh conformance, the attachment cases (conformance/tests/mesh/mesh-*.go and
httproute-simple-same-namespace.go): which requests a Service-parented route applies to,
from the suite's own client pods, through ztunnel and the waypoint. Each test is named after
the suite's ShortName and sends its requests with its expectations; `seen_path` and
`location` are checks the suite's mesh client leaves out that the spec asks for."""
import json

from e2e.conformance.conflab import CONSUMER_NS, NS, Case


def test_MeshBasic(lab):
    # no manifest: a mesh client reaches a mesh Service with no route (the waypoint passes it)
    lab.expect([Case(host="echo", status=200, seen_path="/")])


def test_MeshHTTPRouteSimpleSameNamespace(applied):
    with applied("httproute-simple-same-namespace.yaml") as lab:
        lab.expect([Case(path="/", host="echo", status=200, backend="echo-v1", seen_path="/")] * 3)


def test_MeshTrafficSplit(applied):
    with applied("mesh-split.yaml") as lab:
        lab.expect([Case(path="/v1", backend="echo-v1", seen_path="/v1"),
                    Case(path="/v2", backend="echo-v2", seen_path="/v2"),
                    # Exact matches only, and a route is attached: anything else is 404
                    Case(path="/v1/x", status=404), Case(path="/", status=404)])


def test_MeshFrontend(applied, proto):
    with applied("mesh-frontend.yaml") as lab:
        v2 = lab.ip("echo-v2", NS)
        lab.expect([
            Case(host="echo-v2", status=200, response_headers={"X-Header-Set": "set"}, backend="echo-v2"),
            # "Send to pod IP": routes belong to the Service address (GAMMA), not its pods
            Case(host=f"{v2}:8080", status=200, absent_response_headers=["X-Header-Set"], backend="echo-v2"),
        ], protocol=proto)


def test_MeshFrontendHostname(applied, proto):
    # the route attaches by the Service dialled (its ClusterIP), whatever the Host header says
    with applied("mesh-frontend.yaml") as lab:
        lab.expect([
            Case(connect="echo-v2", host="echo-v1", status=200, response_headers={"X-Header-Set": "set"},
                 backend="echo-v2"),
            Case(connect="echo-v1", host="echo-v2", status=200, absent_response_headers=["X-Header-Set"],
                 backend="echo-v1"),
        ], protocol=proto)


def test_MeshPorts(applied, proto):
    with applied("mesh-ports.yaml") as lab:
        lab.expect([
            Case(host="echo-v1", response_headers={"X-Header-Set": "v1"}, backend="echo-v1"),
            # parentRef port 80: port 8080 of the same Service has no route
            Case(host="echo-v1:8080", absent_response_headers=["X-Header-Set"], backend="echo-v1"),
            # no port in the parentRef: every port of the Service
            Case(host="echo-v2", response_headers={"X-Header-Set": "v2"}, backend="echo-v2"),
            Case(host="echo-v2:8080", response_headers={"X-Header-Set": "v2"}, backend="echo-v2"),
        ], protocol=proto)


def test_MeshConsumerRoute(applied, proto):
    with applied("mesh-consumer-route.yaml") as lab:
        host = f"echo-v1.{NS}"
        lab.expect([Case(host=host, response_headers={"X-Header-Set": "set"}, backend="echo-v1")],
                   namespace=CONSUMER_NS, protocol=proto)
        # the producer's own callers do not get the consumer's route
        lab.expect([Case(host=host, absent_response_headers=["X-Header-Set"], backend="echo-v1")], protocol=proto)
        # the waypoint lists the consumer route, for callers of that namespace only
        rows = [r for r in lab.waypoint_routes() if r.get("route") == f"{CONSUMER_NS}/mesh-echo-add-header"]
        assert rows and {r["parent"] for r in rows} == {f"{NS}/echo-v1:80", f"{NS}/echo-v1:8080",
                                                        f"{NS}/echo-v1:7070"}, rows
        assert all(r["from"] == CONSUMER_NS for r in rows), rows


def test_waypoint_gateway_status_as_the_spec_requires(lab):
    # not a conformance case: the Gateway API's status for the waypoint Gateway itself
    gw = json.loads(lab.cli("get", "gateway", "waypoint", "-n", NS, "-o", "json").stdout)
    st = gw["status"]
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Accepted": "True", "Programmed": "True"}
    [listener] = st["listeners"]
    assert (listener["name"], listener["supportedKinds"], listener["attachedRoutes"]) == ("mesh", [], 0)
    conds = {c["type"]: (c["status"], c["observedGeneration"]) for c in listener["conditions"]}
    assert conds == {"Accepted": ("True", 1), "Programmed": ("True", 1), "ResolvedRefs": ("True", 1),
                     "Conflicted": ("False", 1)}
    # computed from the lab's config directory: the same times on every `get`
    again = json.loads(lab.cli("get", "gateway", "waypoint", "-n", NS, "-o", "json").stdout)
    assert again["status"] == st
