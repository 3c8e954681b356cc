"""reconcile.py table tests: which pods are enrolled and with which mTLS mode."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meshcore.resources import from_dict
from nodeagent.reconcile import (Enroll, Pod, SetStrict, Unenroll, apply, desired,
                                 peer_auth_mode, reconcile)


def _res(kind, namespace, name, labels=None, spec=None):
    """A real, validated resource, as the control plane pushes it."""
    meta = {"name": name, "labels": labels or {}, **({"namespace": namespace} if namespace else {})}
    api = "v1" if kind == "Namespace" else "trellis.dev/v1alpha1"
    return from_dict({"apiVersion": api, "kind": kind, "metadata": meta, **({"spec": spec} if spec else {})})


def ns(name, ambient=True):
    return _res("Namespace", None, name, {"trellis.dev/dataplane-mode": "ambient"} if ambient else {})


def we(namespace, name, node="n1", netns="auto", labels=None, meta=None, sa="default", address="10.244.1.5"):
    netns = f"trellis-{node}-{namespace}-{name}" if netns == "auto" else netns
    spec = {"address": address, "labels": labels or {"app": name}, "serviceAccount": sa, "node": node}
    if netns:
        spec["networkNamespace"] = netns
    return _res("WorkloadEntry", namespace, name, meta, spec)


def pa(namespace, name, mode, selector=None):
    spec = {"mtls": {"mode": mode}}
    if selector is not None:
        spec["selector"] = selector
    return _res("PeerAuthentication", namespace, name, None, spec)


def res(*rs):
    return {r.key: r for r in rs}


@pytest.mark.parametrize("resources,uids", [
    (res(ns("a"), we("a", "p1")), ["a/p1"]),
    (res(ns("a", ambient=False), we("a", "p1")), []),          # namespace not ambient
    (res(we("a", "p1")), []),                                   # namespace unknown
    (res(ns("a"), we("a", "p1", node="n2")), []),               # other node
    (res(ns("a"), we("a", "p1", netns=None)), []),              # a VM: nothing to attach to
    (res(ns("a"), we("a", "p1", meta={"trellis.dev/dataplane-mode": "none"})), []),  # opt-out
    (res(ns("a"), we("a", "p1"), we("a", "p2"), ns("b"), we("b", "p1")), ["a/p1", "a/p2", "b/p1"]),
])
def test_which_pods_are_enrolled(resources, uids):
    assert sorted(desired(resources, "n1")) == uids


def test_pod_fields():
    got = desired(res(ns("a"), we("a", "p1", sa="web", address="10.244.1.9")), "n1")["a/p1"]
    assert got == Enroll(Pod("a/p1", "a", "p1", "10.244.1.9", "web", "trellis-n1-a-p1"), False)


WEB = {"app": "web"}


@pytest.mark.parametrize("policies,mode", [
    ([], "PERMISSIVE"),
    ([pa("trellis-system", "mesh", "STRICT")], "STRICT"),
    ([pa("trellis-system", "mesh", "STRICT"), pa("a", "ns", "PERMISSIVE")], "PERMISSIVE"),
    ([pa("a", "ns", "STRICT"), pa("a", "w", "PERMISSIVE", {"matchLabels": WEB})], "PERMISSIVE"),
    ([pa("a", "ns", "PERMISSIVE"), pa("a", "w", "STRICT", {"matchLabels": WEB})], "STRICT"),
    ([pa("a", "w", "STRICT", {"matchLabels": {"app": "db"}})], "PERMISSIVE"),   # selects others
    ([pa("b", "ns", "STRICT")], "PERMISSIVE"),                                  # other namespace
    ([pa("b", "w", "STRICT", {"matchLabels": WEB})], "PERMISSIVE"),
    ([pa("trellis-system", "w", "STRICT", {"matchLabels": WEB})], "PERMISSIVE"),  # root + selector: only root pods
    ([pa("trellis-system", "mesh", "STRICT"), pa("a", "ns", "UNSET")], "STRICT"),  # UNSET inherits
])
def test_peer_authentication_precedence(policies, mode):
    assert peer_auth_mode(policies, "a", WEB) == mode


P1 = Pod("a/p1", "a", "p1", "10.244.1.5", "default", "trellis-n1-a-p1")
BASE = [ns("a"), we("a", "p1")]


@pytest.mark.parametrize("resources,enrolled,actions", [
    (res(*BASE), {}, [Enroll(P1, False)]),
    (res(*BASE), {"a/p1": Enroll(P1, False)}, []),
    (res(ns("a")), {"a/p1": Enroll(P1, False)}, [Unenroll("a/p1")]),
    (res(ns("a", ambient=False), we("a", "p1")), {"a/p1": Enroll(P1, True)}, [Unenroll("a/p1")]),
    (res(*BASE, pa("a", "ns", "STRICT")), {"a/p1": Enroll(P1, False)}, [SetStrict("a/p1", True)]),
    (res(*BASE), {"a/p1": Enroll(P1, True)}, [SetStrict("a/p1", False)]),
    (res(ns("a"), we("a", "p1", address="10.244.1.6")), {"a/p1": Enroll(P1, False)},
     [Unenroll("a/p1"), Enroll(Pod("a/p1", "a", "p1", "10.244.1.6", "default", "trellis-n1-a-p1"), False)]),
    (res(ns("a"), we("a", "p2"), pa("a", "ns", "STRICT")), {"a/p1": Enroll(P1, False)},
     [Unenroll("a/p1"), Enroll(Pod("a/p2", "a", "p2", "10.244.1.5", "default", "trellis-n1-a-p2"), True)]),
])
def test_reconcile_actions(resources, enrolled, actions):
    assert reconcile(resources, "n1", enrolled) == actions


def test_applying_the_actions_reaches_a_fixed_point():
    resources = res(ns("a"), we("a", "p2"), we("a", "p3"), pa("a", "ns", "STRICT"))
    enrolled = {"a/p1": Enroll(P1, False)}
    for action in reconcile(resources, "n1", enrolled):
        enrolled = apply(enrolled, action)
    assert sorted(enrolled) == ["a/p2", "a/p3"]
    assert all(e.strict for e in enrolled.values())
    assert reconcile(resources, "n1", enrolled) == []


NAMES = st.sampled_from(["a", "b"])
PODS = st.sampled_from(["p1", "p2", "p3"])


@st.composite
def worlds(draw):
    rs = [ns(n, ambient=draw(st.booleans())) for n in draw(st.sets(NAMES))]
    for n, p in draw(st.sets(st.tuples(NAMES, PODS))):
        rs.append(we(n, p, node=draw(st.sampled_from(["n1", "n2"])), address=draw(st.sampled_from(["10.0.0.1", "10.0.0.2"]))))
    for n in draw(st.sets(st.sampled_from(["a", "b", "trellis-system"]))):
        rs.append(pa(n, "pa", draw(st.sampled_from(["STRICT", "PERMISSIVE", "UNSET"]))))
    return res(*rs)


@settings(max_examples=200, deadline=None)
@given(before=worlds(), after=worlds())
def test_any_change_converges_in_one_pass(before, after):
    enrolled = {}
    for world in (before, after):
        for action in reconcile(world, "n1", enrolled):
            enrolled = apply(enrolled, action)
        assert enrolled == desired(world, "n1")
        assert reconcile(world, "n1", enrolled) == []


def test_resources_may_be_a_list():
    assert sorted(desired([ns("a"), we("a", "p1")], "n1")) == ["a/p1"]


