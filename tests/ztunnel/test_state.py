import json

from ztunnel.state import State

from zt_helpers import mesh, pol, rule, wl


def test_indexes():
    s = mesh()
    assert s.workload_by_address("10.244.1.3").uid == "default/web-1"
    assert s.workload_by_uid("legacy/old").address == "10.244.2.9"
    assert s.service_by_vip("10.96.0.10", 443).key == "default/web"
    assert s.service_by_vip("10.96.0.10", 8080) is None
    assert [w.uid for w in s.endpoints(s.service_by_vip("10.96.0.10", 80))] == ["default/web-1", "default/web-2"]
    assert s.identity_of(s.workload_by_uid("shop/other-ns")) == "spiffe://cluster.local/ns/shop/sa/cart"


def test_dump_is_json_and_complete():
    d = json.loads(json.dumps(mesh().dump()))
    assert {w["uid"] for w in d["workloads"]} >= {"default/client", "legacy/old"}
    web = next(x for x in d["services"] if x["name"] == "default/web")
    assert web["endpoints"] == ["default/web-1", "default/web-2"]
    old = next(w for w in d["workloads"] if w["uid"] == "legacy/old")
    assert old["protocol"] == "TCP"
    assert d["enrolledNamespaces"] == ["default", "shop"]


def test_duplicate_address_is_a_warning_not_a_crash():
    s = State(workloads=[wl("a", "10.0.0.1"), wl("b", "10.0.0.1")])
    assert s.workload_by_address("10.0.0.1").uid == "default/a"
    assert "share address 10.0.0.1" in s.warnings[0]


def test_policy_attachment():
    base = mesh()
    web1 = base.workload_by_uid("default/web-1")
    policies = [
        pol("ns-wide"),
        pol("by-selector", selector={"app": "web"}),
        pol("other-selector", selector={"app": "db"}),
        pol("by-service", refs=[("Service", "web")]),
        pol("by-other-service", refs=[("Service", "db")]),
        pol("by-namespace", refs=[("Namespace", "default")]),
        pol("other-ns", ns="shop"),
        pol("mesh-wide", ns="trellis-system"),
        pol("root-selector", ns="trellis-system", selector={"app": "web"}),
    ]
    s = State(workloads=base.workloads, services=base.services, policies=policies)
    got = {p.key for p in s.policies_for(web1)}
    assert got == {"default/ns-wide", "default/by-selector", "default/by-service", "default/by-namespace",
                   "trellis-system/mesh-wide", "trellis-system/root-selector"}
    other = s.workload_by_uid("shop/other-ns")
    assert {p.key for p in s.policies_for(other)} == {"shop/other-ns", "trellis-system/mesh-wide",
                                                     "trellis-system/root-selector"}
