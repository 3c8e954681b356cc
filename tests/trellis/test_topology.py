"""lab.yaml validation and the naming/addressing plan: pure, table-driven."""
import copy
from pathlib import Path

import pytest
import yaml

from trellis.lab.cgroups import CgroupError, find_cgroup2
from trellis.lab.topology import LabConfigError, load_lab, parse_lab, plan

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "apiVersion": "trellis.dev/v1alpha1", "kind": "Lab", "metadata": {"name": "t"},
    "spec": {"trustDomain": "example.org", "nodes": ["node1", "node2"], "pods": [
        {"name": "a", "namespace": "default", "node": "node1", "command": ["sleep", "infinity"]},
        {"name": "b", "node": "node2", "serviceAccount": "web", "labels": {"app": "web"},
         "command": ["trellis-echo", "--port", 8080], "address": "10.244.2.50"},
    ]},
}


def with_change(path: str, value, delete: bool = False):
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if delete:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("path,value,delete,expected", [
    ("kind", "Pod", False, "kind: must be 'Lab'"),
    ("apiVersion", "v1", False, "apiVersion: must be 'trellis.dev/v1alpha1'"),
    ("spec.certTTL", "soon", False, "spec.certTTL: 'soon' must be a duration such as 90s, 10m or 24h"),
    ("spec", None, True, "spec: missing"),
    ("spec.nodes", [], False, "spec.nodes: must be a non-empty list"),
    ("spec.nodes", ["node1", "node1"], False, "spec.nodes: node names must be unique"),
    ("spec.nodes", ["Node_1"], False, "spec.nodes[0]: 'Node_1' must be a DNS label"),
    ("spec.extra", 1, False, "spec.extra: unknown field"),
    ("spec.trustDomain", "Bad Domain", False, "spec.trustDomain:"),
    ("spec.pods.0.node", "node9", False, "spec.pods[0].node: 'node9' is not one of spec.nodes (node1, node2)"),
    ("spec.pods.0.command", [], False, "spec.pods[0].command: must be a non-empty list"),
    ("spec.pods.0.command", "sleep 1", False, "spec.pods[0].command: must be a non-empty list"),
    ("spec.pods.0.name", "A_B", False, "spec.pods[0].name: 'A_B' must be a DNS label"),
    ("spec.pods.0.image", "x", False, "spec.pods[0].image: unknown field"),
    ("spec.pods.1.address", "10.244.2.999", False, "spec.pods[1].address: '10.244.2.999' is not an IPv4 address"),
    ("spec.pods.1.labels", ["app"], False, "spec.pods[1].labels: must be a map"),
    ("spec.pods.1.namespace", "web", False, None),   # fine: namespace given explicitly
    ("spec.ztunnelWorkers", 0, False, "spec.ztunnelWorkers: 0 must be a number of worker processes from 1 to 64"),
    ("spec.ztunnelWorkers", "lots", False, "spec.ztunnelWorkers: 'lots' must be"),
    ("spec.ztunnelWorkers", 3, False, None),
    ("spec.ztunnelWorkers", "auto", False, None),
])
def test_validation_names_file_and_field(path, value, delete, expected):
    doc = with_change(path, value, delete)
    if expected is None:
        assert len(parse_lab(doc, "x/lab.yaml").pods) == 2
        return
    with pytest.raises(LabConfigError) as err:
        parse_lab(doc, "x/lab.yaml")
    assert any(line.startswith("x/lab.yaml: ") and expected in line for line in err.value.errors), err.value.errors


def test_ztunnel_workers_reach_every_ztunnel():
    from trellis.lab.topology import plan
    from trellis.lab.up import ztunnel_workers
    assert ztunnel_workers(plan(parse_lab(with_change("spec.ztunnelWorkers", 3), "x"), "tt")) == ["--workers", "3"]
    assert ztunnel_workers(plan(parse_lab(copy.deepcopy(GOOD), "x"), "tt")) == []


def test_every_error_is_reported_at_once():
    doc = with_change("spec.pods.0.node", "node9")
    doc["spec"]["pods"][1]["command"] = []
    with pytest.raises(LabConfigError) as err:
        parse_lab(doc)
    assert len(err.value.errors) == 2


def test_duplicate_pod_is_an_error():
    doc = copy.deepcopy(GOOD)
    doc["spec"]["pods"].append(dict(doc["spec"]["pods"][0]))
    with pytest.raises(LabConfigError, match=r"spec.pods\[2\]: pod default/a is declared twice"):
        parse_lab(doc)


def test_plan_names_and_addresses():
    p = plan(parse_lab(GOOD), prefix="tt-x")
    assert p.fabric_netns == "tt-x-fabric" and p.cgroup_root == "tt-x-lab"
    n1, n2 = p.nodes
    assert (n1.netns, n1.fabric_ip, n1.pod_cidr, n1.bridge_ip) == ("tt-x-node1", "10.100.0.11", "10.244.1.0/24", "10.244.1.1")
    assert (n2.netns, n2.fabric_ip) == ("tt-x-node2", "10.100.0.12")
    a, b = p.pods
    assert (a.netns, a.address, a.gateway, a.cgroup) == ("tt-x-node1-default-a", "10.244.1.2", "10.244.1.1", "node1/pods/default_a")
    assert (b.address, b.spec.service_account, b.spec.command[-1]) == ("10.244.2.50", "web", "8080")
    assert all(len(x) <= 15 for x in [n1.fabric_veth, a.host_veth])  # IFNAMSIZ


def test_auto_addresses_skip_given_ones():
    doc = copy.deepcopy(GOOD)
    doc["spec"]["pods"] = [
        {"name": "p1", "node": "node1", "command": ["x"], "address": "10.244.1.2"},
        {"name": "p2", "node": "node1", "command": ["x"]},
        {"name": "p3", "node": "node1", "command": ["x"]},
    ]
    assert [q.address for q in plan(parse_lab(doc)).pods] == ["10.244.1.2", "10.244.1.3", "10.244.1.4"]


@pytest.mark.parametrize("address,message", [
    ("10.244.1.5", "not a free host address in node2's pod subnet 10.244.2.0/24"),
    ("10.244.2.1", "(.1 is the gateway)"),
    ("10.244.2.255", "not a free host address"),
])
def test_given_address_must_fit_node_subnet(address, message):
    doc = with_change("spec.pods.1.address", address)
    with pytest.raises(LabConfigError) as err:
        plan(parse_lab(doc, "lab.yaml"))
    assert message in str(err.value) and "spec.pods[1].address" in str(err.value)


def test_load_lab_errors_name_the_file(tmp_path):
    with pytest.raises(LabConfigError, match=str(tmp_path / "lab.yaml") + ": cannot read"):
        load_lab(tmp_path)
    (tmp_path / "lab.yaml").write_text("spec: [\n")
    with pytest.raises(LabConfigError, match="not valid YAML"):
        load_lab(tmp_path)


def test_example_lab_is_valid():
    p = plan(load_lab(REPO / "examples" / "lab"))
    assert [n.name for n in p.nodes] == ["node1", "node2"]
    assert {q.key for q in p.pods} >= {"default/sleep", "default/web-1"}
    assert len({q.address for q in p.pods}) == len(p.pods)
    yaml.safe_dump(GOOD)  # the fixture itself is plain YAML


@pytest.mark.parametrize("mounts,expected", [
    ("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", "/sys/fs/cgroup"),
    ("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
     "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n", "/sys/fs/cgroup/unified"),
    ("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n", None),
])
def test_cgroup2_found_from_mounts(mounts, expected):
    if expected is None:
        with pytest.raises(CgroupError, match="no cgroup2"):
            find_cgroup2(mounts)
    else:
        assert str(find_cgroup2(mounts)) == expected
