"""The lab's waypoint pods: which to create and delete (trellis/lab/waypointplan.py, pure)."""
from __future__ import annotations

import textwrap

from meshcore.resources import parse_documents
from trellis.lab.waypointplan import GATEWAY_LABEL, Waypoint, plan, waypoints_in, workload_entry

NODES = [{"name": "node1", "netns": "t-node1", "podCIDR": "10.244.1.0/24"},
         {"name": "node2", "netns": "t-node2", "podCIDR": "10.244.2.0/24"}]
STATIC = [{"name": "sleep", "namespace": "default", "node": "node1", "address": "10.244.1.2"},
          {"name": "web", "namespace": "default", "node": "node2", "address": "10.244.2.2"}]


def apply(waypoints, pods):
    """Run a plan to completion as the actor would: the pods lab.json holds afterwards."""
    p = plan(waypoints, pods, NODES, "t")
    gone = {id(r) for r in p.delete}
    return p, [r for r in pods if id(r) not in gone] + [c.record("/cg") for c in p.create]


def test_one_replica_gets_a_pod_with_a_free_address_veth_netns_and_cgroup():
    p, _ = apply([Waypoint("default", "waypoint", 1, "waypoint")], STATIC)
    assert not p.delete and not p.errors and len(p.create) == 1
    pod = p.create[0]
    assert pod.name == "waypoint-0" and pod.gateway == "waypoint" and pod.service_account == "waypoint"
    node = next(n for n in NODES if n["name"] == pod.node)
    assert pod.address == f"{node['podCIDR'][:-5]}.3"   # .2 is the static pod's, .1 the gateway
    assert pod.gateway_ip == f"{node['podCIDR'][:-5]}.1"
    assert pod.host_veth == "vw0" and pod.netns == f"t-{pod.node}-default-waypoint-0"
    assert pod.cgroup == f"{pod.node}/pods/default_waypoint-0"


def test_replicas_spread_round_robin_and_scale_down_removes_the_highest():
    wp = Waypoint("default", "waypoint", 2, "waypoint")
    p, pods = apply([wp], STATIC)
    assert sorted(c.name for c in p.create) == ["waypoint-0", "waypoint-1"]
    assert {c.node for c in p.create} == {"node1", "node2"}
    p2, _ = apply([wp], pods)
    assert p2.empty   # converged: nothing to do
    p3, pods3 = apply([Waypoint("default", "waypoint", 1, "waypoint")], pods)
    assert [r["name"] for r in p3.delete] == ["waypoint-1"] and not p3.create
    p4, _ = apply([Waypoint("default", "waypoint", 3, "waypoint")], pods3)
    assert sorted(c.name for c in p4.create) == ["waypoint-1", "waypoint-2"]


def test_addresses_and_veths_on_one_node_never_collide():
    many = Waypoint("default", "wp", 4, "wp")
    p, _ = apply([many], STATIC)
    per_node: dict[str, list] = {}
    for c in p.create:
        per_node.setdefault(c.node, []).append(c)
    for node, cs in per_node.items():
        assert len({c.address for c in cs}) == len(cs) == 2
        assert {c.host_veth for c in cs} == {"vw0", "vw1"}
        assert not {c.address for c in cs} & {s["address"] for s in STATIC}


def test_a_freed_address_is_reused_and_a_gone_gateway_removes_every_pod():
    p, pods = apply([Waypoint("default", "a", 1, "a"), Waypoint("prod", "b", 1, "b")], STATIC)
    assert len(p.create) == 2
    p2, pods2 = apply([], pods)
    assert sorted(r["name"] for r in p2.delete) == ["a-0", "b-0"] and not p2.create
    assert pods2 == STATIC


def test_a_changed_service_account_replaces_the_pod():
    _, pods = apply([Waypoint("default", "waypoint", 1, "waypoint")], STATIC)
    p, _ = apply([Waypoint("default", "waypoint", 1, "other")], pods)
    assert [r["name"] for r in p.delete] == ["waypoint-0"]
    assert [c.service_account for c in p.create] == ["other"]


def test_a_replica_named_like_a_lab_pod_is_refused_with_a_reason():
    p, _ = apply([Waypoint("default", "web", 1, "web")], STATIC + [dict(STATIC[0], name="web-0")])
    assert not p.create and "web-0" in p.errors[0] and "lab.yaml" in p.errors[0]


def test_a_full_subnet_is_an_error_not_a_crash():
    full = [{"name": f"p{i}", "namespace": "x", "node": n["name"], "address": f"{n['podCIDR'][:-5]}.{i}"}
            for n in NODES for i in range(2, 255)]
    p, _ = apply([Waypoint("default", "waypoint", 1, "waypoint")], full)
    assert not p.create and "full" in p.errors[0]


def test_waypoints_in_reads_class_replicas_and_service_account_annotation():
    docs = parse_documents(textwrap.dedent("""
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: waypoint, namespace: default, annotations: {trellis.dev/replicas: "2"}}
        spec: {gatewayClassName: trellis-waypoint}
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: wp2, namespace: prod, annotations: {trellis.dev/service-account: custom}}
        spec: {gatewayClassName: trellis-waypoint}
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: bad, namespace: prod, annotations: {trellis.dev/service-account: Not_A_Label}}
        spec: {gatewayClassName: trellis-waypoint}
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: ingress, namespace: default}
        spec:
          gatewayClassName: other
          listeners: [{name: http, port: 80, protocol: HTTP}]
        """), "gw.yaml")
    assert not docs.errors, docs.errors
    wps, errors = waypoints_in(docs.resources)
    assert wps == [Waypoint("default", "waypoint", 2, "waypoint"), Waypoint("prod", "wp2", 1, "custom")]
    assert len(errors) == 1 and "gw.yaml" in errors[0] and "prod/bad" in errors[0] and "service-account" in errors[0]


def test_workload_entry_is_a_valid_replica_of_its_gateway_kept_out_of_capture():
    p, _ = apply([Waypoint("default", "waypoint", 1, "waypoint")], STATIC)
    doc = workload_entry(p.create[0].record("/cg"))
    import yaml
    res = parse_documents(yaml.safe_dump(doc), "we.yaml")
    assert not res.errors, res.errors
    from meshcore.mesh import in_mesh
    # even in an enrolled namespace: the node agent must not hand its netns to ztunnel
    ns = parse_documents("apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: "
                         "{trellis.dev/dataplane-mode: ambient}}\n", "ns.yaml").resources
    assert not in_mesh(res.resources + ns)["default/waypoint-0"].in_mesh
    assert doc["metadata"]["labels"][GATEWAY_LABEL] == "waypoint"
    assert doc["spec"]["serviceAccount"] == "waypoint" and doc["spec"]["address"] == p.create[0].address


def test_addresses_go_on_after_the_last_one_handed_out_so_a_freed_one_is_not_reused_at_once():
    wp = Waypoint("default", "waypoint", 1, "waypoint")
    first = plan([wp], STATIC, NODES, "t").create[0]
    last = {first.node: first.address}
    again = plan([wp], STATIC, NODES, "t", last).create[0]   # after a delete: its address is free again
    prefix = first.address.rsplit(".", 1)[0]
    assert (first.address, again.address) == (f"{prefix}.3", f"{prefix}.4")
    # at the end of the subnet it wraps round, skipping what is taken (.2 is a static pod's)
    wrapped = plan([wp], STATIC, NODES, "t", {first.node: f"{prefix}.254"}).create[0]
    assert wrapped.address == f"{prefix}.3"
