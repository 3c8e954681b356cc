"""backendRefs across namespaces through the router: the one rule of
meshcore.resources.grants.backend_permitted (a ReferenceGrant in the backend's namespace, or
the backend is in the route's namespace, or it is the parent Service itself), and a
backendRef of another kind than Service: each gives 500 for its share, never a wrong backend."""
import pytest

from meshcore.resources import parse_documents
from meshcore.resources.grants import backend_permitted
from waypoint.http.events import Request
from waypoint.routing import RouteTable

SERVICES = {("mesh", "echo"): [80], ("other", "db"): [80], ("other", "cache"): [80], ("consumer", "mock"): [80]}


def route(backend: str, ns="mesh", kind="HTTPRoute", parent="{group: \"\", kind: Service, name: echo, namespace: mesh}"):
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: r, namespace: {ns}}}\n"
            f"spec:\n  parentRefs: [{parent}]\n  rules:\n  - backendRefs: [{backend}]\n---\n")


def grant(from_kind="HTTPRoute", from_ns="mesh", to="{group: \"\", kind: Service}", ns="other",
          version="v1beta1"):
    return (f"apiVersion: gateway.networking.k8s.io/{version}\nkind: ReferenceGrant\n"
            f"metadata: {{name: g, namespace: {ns}}}\nspec:\n"
            f"  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]\n"
            f"  to: [{to}]\n---\n")


def decide(text, client="mesh", grpc=False):
    res = parse_documents(text, "cfg.yaml")
    assert res.errors == [], [str(e) for e in res.errors]
    headers = (("content-type", "application/grpc"),) if grpc else ()
    return RouteTable(res.resources, SERVICES).decide(Request("GET", "/", "echo", headers), "mesh", "echo", 80,
                                                      client, lambda: 0.0)


DB = "{name: db, namespace: other, port: 80}"


@pytest.mark.parametrize("grants,action", [
    ("", "respond"),                                                           # no grant: RefNotPermitted
    (grant(), "forward"),                                                      # v1beta1, any Service
    (grant(version="v1"), "forward"),                                          # v1 (Gateway API 1.5)
    (grant(to="{group: \"\", kind: Service, name: db}"), "forward"),            # that name
    (grant(to="{group: \"\", kind: Service, name: cache}"), "respond"),         # another name
    (grant(from_kind="GRPCRoute"), "respond"),                                 # another route kind
    (grant(from_ns="elsewhere"), "respond"),                                   # another route namespace
    (grant(ns="mesh"), "respond"),                                             # a grant in the wrong namespace
    (grant(to="{group: apps, kind: Service}"), "respond"),                     # not the core group
])
def test_cross_namespace_backend_needs_a_reference_grant(grants, action):
    d = decide(route(DB) + grants)
    assert d.action == action
    if action == "respond":
        assert d.status == 500 and "no ReferenceGrant" in d.reason
    else:
        assert (d.backend.namespace, d.backend.name) == ("other", "db")


def test_grpc_route_needs_a_grant_for_grpc_routes():
    text = route(DB, kind="GRPCRoute")
    assert decide(text, grpc=True).status == 500
    assert decide(text + grant(from_kind="GRPCRoute"), grpc=True).backend.name == "db"


def test_consumer_route_may_send_to_its_parent_and_its_own_namespace_without_a_grant():
    # MeshConsumerRoute (gateway-api conformance): the consumer route's backend is the parent Service
    to_parent = route("{name: echo, namespace: mesh, port: 80}", ns="consumer")
    d = decide(to_parent, client="consumer")
    assert d.action == "forward" and (d.backend.namespace, d.backend.name) == ("mesh", "echo")
    own = decide(route("{name: mock, port: 80}", ns="consumer"), client="consumer")
    assert own.action == "forward" and (own.backend.namespace, own.backend.name) == ("consumer", "mock")
    # a third namespace is the waypoint widening what the caller reaches: a grant is needed
    third = route(DB, ns="consumer")
    assert decide(third, client="consumer").status == 500
    assert decide(third + grant(from_ns="consumer"), client="consumer").backend.name == "db"


def test_a_backend_of_another_kind_gets_500_not_a_service_of_that_name():
    d = decide(route("{group: example.com, kind: Bucket, name: echo, port: 80}"))
    assert d.action == "respond" and d.status == 500 and "example.com/Bucket" in d.reason


def test_backend_permitted_is_pure_and_ignores_other_kinds():
    res = parse_documents(grant(), "g.yaml").resources
    assert backend_permitted(res, "HTTPRoute", "mesh", "other", "db")
    assert not backend_permitted([], "HTTPRoute", "mesh", "other", "db")
    assert backend_permitted([], "HTTPRoute", "mesh", "mesh", "db")
    assert backend_permitted([], "HTTPRoute", "a", "b", "svc", parent=("b", "svc"))
    assert not backend_permitted([], "HTTPRoute", "a", "b", "svc", parent=("b", "other"))


@pytest.mark.parametrize("spec,path,message", [
    ("  from: []\n  to: [{group: \"\", kind: Service}]\n", "spec.from", "at least one"),
    ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute}]\n  to: [{group: \"\", kind: Service}]\n",
     "spec.from[0].namespace", "is required"),
    ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: a}]\n  to: [{kind: Service}]\n",
     "spec.to[0].group", "is required"),
    ("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: a}]\n"
     "  to: [{group: \"\", kind: Service, names: [x]}]\n", "spec.to[0].names", "unknown field"),
])
def test_reference_grant_validation_names_the_field(spec, path, message):
    text = f"apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g}}\nspec:\n{spec}"
    res = parse_documents(text, "cfg/g.yaml")
    assert res.resources == [] and len(res.errors) == 1
    e = res.errors[0]
    assert (e.source, e.obj, e.path) == ("cfg/g.yaml", "ReferenceGrant default/g", path) and message in e.message
