"""meshcore.mesh: the mesh rules, and every component deciding enrollment the same way."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meshcore import mesh
from meshcore.resources import from_dict
from meshcore.state import State
from nodeagent.reconcile import desired

MODE = "trellis.dev/dataplane-mode"
WAYPOINT = "trellis.dev/use-waypoint"


def _ns(labels):
    return from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": labels}})


def _pod(meta_labels, spec_labels):
    return from_dict({"apiVersion": "trellis.dev/v1alpha1", "kind": "WorkloadEntry",
                      "metadata": {"name": "cart", "namespace": "shop", "labels": meta_labels},
                      "spec": {"address": "10.244.1.5", "labels": spec_labels, "node": "n1",
                               "networkNamespace": "trellis-n1-shop-cart"}})


@pytest.mark.parametrize("ns_mode,pod_mode,expected", [
    (None, None, False),
    ("ambient", None, True),
    ("ambient", "none", False),        # the pod opts out (issue 10's bug)
    (None, "ambient", True),           # the pod opts in on its own, as istio-cni allows
    ("none", "ambient", True),
    ("ambient", "ambient", True),
    ("Ambient", None, False),          # label values are case-sensitive
    ("sidecar", None, False),
])
def test_enrollment_table(ns_mode, pod_mode, expected):
    got = mesh.enrollment("shop", {MODE: ns_mode} if ns_mode else {}, {MODE: pod_mode} if pod_mode else {})
    assert got.in_mesh is expected
    assert ("shop" in got.reason or "pod" in got.reason) and MODE in got.reason


LABEL_VALUES = st.sampled_from([None, "ambient", "none", "other", ""])


def _labels(value, extra):
    return {**extra, **({MODE: value} if value is not None else {})}


@settings(max_examples=300, deadline=None)
@given(ns_mode=LABEL_VALUES, meta_mode=LABEL_VALUES, spec_mode=LABEL_VALUES,
       extra=st.dictionaries(st.sampled_from(["app", "version", "tier"]), st.sampled_from(["a", "b"]), max_size=2),
       with_ns=st.booleans())
def test_node_agent_ztunnel_and_lab_agree_on_enrollment(ns_mode, meta_mode, spec_mode, extra, with_ns):
    resources = [_pod(_labels(meta_mode, extra), _labels(spec_mode, extra))]
    if with_ns:
        resources.append(_ns(_labels(ns_mode, {})))
    by_key = {r.key: r for r in resources}
    node_agent = "shop/cart" in desired(by_key, "n1")
    ztunnel = State.from_resources(resources).workload_by_uid("shop/cart").in_mesh
    lab = mesh.in_mesh(resources)["shop/cart"].in_mesh
    assert node_agent == ztunnel == lab, (ns_mode, meta_mode, spec_mode, with_ns)


@pytest.mark.parametrize("ns_labels,own_labels,expected", [
    ({}, {}, None),
    ({WAYPOINT: "ns-wp"}, {}, "ns-wp"),
    ({WAYPOINT: "ns-wp"}, {WAYPOINT: "svc-wp"}, "svc-wp"),   # the Service overrides its namespace
    ({WAYPOINT: "ns-wp"}, {WAYPOINT: "none"}, None),         # and `none` opts it out
    ({}, {WAYPOINT: "svc-wp"}, "svc-wp"),
    ({WAYPOINT: "none"}, {}, None),
    (None, None, None),
])
def test_waypoint_for(ns_labels, own_labels, expected):
    assert mesh.waypoint_for(ns_labels, own_labels) == expected


@pytest.mark.parametrize("identity,ns", [
    ("spiffe://cluster.local/ns/shop/sa/cart", "shop"),
    ("cluster.local/ns/shop/sa/cart", "shop"),
    ("spiffe://cluster.local/trellis/node/n1", None),
    ("spiffe://cluster.local/ns/shop/sa/cart/extra", None),
    ("spiffe://cluster.local/ns/Shop/sa/cart", None),
    ("", None),
    (None, None),
])
def test_namespace_of_parses_with_spiffe_id(identity, ns):
    assert mesh.namespace_of(identity) == ns


@pytest.mark.parametrize("pattern,value,expected", [
    ("*", "x", True), ("*", None, False), ("abc*", "abcd", True), ("abc*", "xabc", False),
    ("*abc", "xabc", True), ("abc", "abc", True), ("abc", "abcd", False),
])
def test_string_matches_istio(pattern, value, expected):
    assert mesh.string_matches(pattern, value) is expected


def test_namespace_matches_uses_the_identitys_namespace():
    cart = "spiffe://cluster.local/ns/shop/sa/cart"
    assert mesh.namespace_matches(["shop"], cart) and mesh.namespace_matches(["sh*"], cart)
    assert not mesh.namespace_matches(["ns"], cart)   # no matching on a path segment by accident
    assert not mesh.namespace_matches(["*"], "spiffe://cluster.local/trellis/node/n1")


@pytest.mark.parametrize("name,app_protocol,transport,declared,version", [
    ("http", None, "TCP", "HTTP", "1.1"),
    ("http-web", None, "TCP", "HTTP", "1.1"),
    ("HTTP2", None, "TCP", "HTTP2", "2"),
    ("http2-api", None, "TCP", "HTTP2", "2"),
    ("grpc", None, "TCP", "GRPC", "2"),
    ("grpc-backend", None, "TCP", "GRPC", "2"),
    ("grpc-web", None, "TCP", "GRPC-Web", None),       # carried as the client sent it (no grpc-web filter)
    ("grpc-web-ui", None, "TCP", "GRPC-Web", None),
    ("tcp-db", None, "TCP", "TCP", None),
    ("https", None, "TCP", "HTTPS", None),
    ("web", None, "TCP", None, None),                   # undeclared: sniffed, the client's protocol
    ("", None, "TCP", None, None),
    ("httpx", None, "TCP", None, None),                 # a prefix only up to the first '-'
    ("http", "kubernetes.io/h2c", "TCP", "HTTP2", "2"),  # appProtocol wins over the name
    ("web", "grpc", "TCP", "GRPC", "2"),
    ("grpc", "http", "TCP", "HTTP", "1.1"),
    ("web", "kubernetes.io/ws", "TCP", "HTTP", "1.1"),
    ("web", "kubernetes.io/wss", "TCP", "HTTPS", None),
    ("web", "example.com/custom", "TCP", None, None),
    ("http", None, "UDP", "UDP", None),
])
def test_port_protocol_follows_istio(name, app_protocol, transport, declared, version):
    assert mesh.port_protocol(name, app_protocol, transport) == declared
    assert mesh.upstream_http_version(declared) == version


@pytest.mark.parametrize("namespace,kind,name,expected", [
    ("trellis-system", "GatewayClass", "trellis-waypoint", True),    # Istio's mesh-wide waypoint policy
    ("shop", "GatewayClass", "trellis-waypoint", False),             # outside the root namespace: nowhere
    (None, "GatewayClass", "trellis-waypoint", False),
    ("trellis-system", "GatewayClass", "istio-waypoint", False),     # another class
    ("trellis-system", "Gateway", "trellis-waypoint", False),        # a Gateway of that name is one waypoint only
    ("trellis-system", "Service", "trellis-waypoint", False),
])
def test_a_gatewayclass_target_applies_at_every_waypoint_only_from_the_root_namespace(namespace, kind, name, expected):
    assert mesh.applies_at_every_waypoint(namespace, kind, name) is expected
