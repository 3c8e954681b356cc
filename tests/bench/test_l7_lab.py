"""The trellis-l7 scenario's lab config: valid, a waypoint-fronted VIP whose route splits
90/10 over two backend Services with a retry policy, and web's pods kept off the waypoint
(trellis-l4 measures them on the L4 path)."""
from pathlib import Path

import yaml

from bench.run import L7_BACKENDS, L7_VIP, LAB_DIR, VIP, WAYPOINT_POD
from meshcore.resources.loader import load_file


def test_the_l7_config_loads_and_says_what_the_scenario_measures():
    result = load_file(LAB_DIR / "config" / "l7.yaml")
    assert not result.errors, result.errors
    by = {(r.kind, r.name): r for r in result.resources}
    gw = by[("Gateway", "waypoint")]
    assert (gw.namespace, gw.spec.gateway_class_name) == (WAYPOINT_POD[0], "trellis-waypoint")
    front = by[("Service", "web-l7")]
    assert str(front.spec.cluster_ip) == L7_VIP and front.labels["trellis.dev/use-waypoint"] == "waypoint"
    assert not front.spec.selector, "web-l7 selects no pod: web's pods stay on the L4 path"
    (rule,) = by[("HTTPRoute", "web-l7")].spec.rules
    assert [(b.name, b.weight) for b in rule.backend_refs] == [(L7_BACKENDS[0], 90), (L7_BACKENDS[1], 10)]
    assert rule.retry is not None and rule.retry.attempts == 2 and 503 in rule.retry.codes
    selectors = {by[("Service", b)].spec.selector["app"] for b in L7_BACKENDS}
    assert selectors == {"web", "web2"}


def test_the_bench_lab_has_the_second_backend_and_the_l4_vip_has_no_waypoint():
    lab = yaml.safe_load((LAB_DIR / "lab.yaml").read_text())
    pods = {(p["namespace"], p["name"]): p for p in lab["spec"]["pods"]}
    assert pods[("mesh", "web2")]["labels"] == {"app": "web2"}
    bench = load_file(Path(LAB_DIR / "config" / "bench.yaml"))
    web = next(r for r in bench.resources if r.kind == "Service" and str(r.spec.cluster_ip) == VIP)
    assert "trellis.dev/use-waypoint" not in web.labels
