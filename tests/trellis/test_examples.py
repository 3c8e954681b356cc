"""The demo lab (examples/lab) as the README walks it: its L4 policy keeps holding once the
README's `trellis waypoint apply -n default --enroll-namespace` puts a waypoint in front of
`web`, and examples/lab/l7.yaml (the README's L7 example) loads beside its config."""
from pathlib import Path

from controlplane.sources import settle
from meshcore.resources import load_dir, load_file
from meshcore.resources.model import from_dict
from meshcore.state.store import State
from trellis import waypointconfig as wc
from trellis.lab.topology import load_lab, plan
from trellis.lab.up import workload_entries

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab"


def _demo(extra=()):
    replaced = {r.key for r in extra}   # as `trellis lab apply` replaces an object
    res = [r for r in load_dir(LAB / "config").resources if r.key not in replaced]
    entries = [from_dict(d, "lab-workloads.yaml") for d in workload_entries(plan(load_lab(LAB)))]
    resources, errors = settle([*res, *entries, *extra])
    assert errors == []
    return State.from_resources(resources)


def _allowing_sleep(state, pod, at_ztunnel):
    w = next(w for w in state.workloads if w.name == pod)
    return [p.name for p in state.policies_for(w, at_ztunnel=at_ztunnel)]


def test_the_demo_policy_is_enforced_by_ztunnel_without_a_waypoint_and_by_the_waypoint_with_one():
    l4 = _demo()
    assert _allowing_sleep(l4, "web-1", at_ztunnel=True) == ["web-allow-sleep"]
    ns = next(r for r in load_dir(LAB / "config").resources if r.kind == "Namespace" and r.name == "default")
    waypoint = [from_dict(wc.gateway("default", "waypoint")), from_dict(wc.enroll("default", "waypoint", ns.to_dict())),
                from_dict({"apiVersion": "trellis.dev/v1alpha1", "kind": "WorkloadEntry",
                           "metadata": {"name": "waypoint-0", "namespace": "default",
                                        "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint",
                                                   "trellis.dev/dataplane-mode": "none"}},
                           "spec": {"address": "10.244.1.9", "node": "node1", "serviceAccount": "waypoint"}})]
    l7 = _demo(waypoint)
    # ztunnel at web's pods no longer applies it (it would see the waypoint, not sleep) ...
    assert _allowing_sleep(l7, "web-1", at_ztunnel=True) == []
    # ... the waypoint does, on the real client
    assert _allowing_sleep(l7, "web-1", at_ztunnel=False) == ["web-allow-sleep"]


def test_the_l7_example_loads_beside_the_demo_config_and_its_services_select_one_version_each():
    l7 = load_file(LAB / "l7.yaml")
    assert l7.errors == []
    assert {r.kind for r in l7.resources} == {"Service", "HTTPRoute", "TrafficPolicy", "RateLimitPolicy",
                                             "AuthorizationPolicy"}
    state = _demo(l7.resources)
    by_name = {s.name: s for s in state.services}
    assert [w.name for w in state.endpoints(by_name["web-v1"])] == ["web-1"]
    assert [w.name for w in state.endpoints(by_name["web-v2"])] == ["web-2"]
