"""Waypoint pods in a real lab: a trellis-waypoint Gateway (declared at `lab up`, or with
`trellis waypoint apply`) gets pods (netns, veth, cgroup, CA credential, WorkloadEntry,
a supervised `python -m waypoint` process), scales, and goes away with nothing left.

Whether the waypoint process itself runs depends on `waypoint/__main__.py` (the wpproxy
work): when it exists, the pods must become ready (:15021) and answer /routes; until then
its command exits and these tests check the lab's side: the record, the command line of
the startup contract, and that the supervisor keeps restarting it."""
import importlib.util
import json
import subprocess
from pathlib import Path

import yaml

from e2e.labctl import wait_until
from trellis.lab.cgroups import find_cgroup2

REAL_WAYPOINT = importlib.util.find_spec("waypoint.__main__") is not None
BASE = ("controlplane", "supervisor")   # and every ztunnel, node agent and lab pod: see others()


def wp_pods(lab, namespace):
    return sorted((p for p in lab.state()["pods"] if p.get("waypoint") and p["namespace"] == namespace),
                  key=lambda p: p["name"])


def entries(lab):
    path = lab.state_dir / "config" / "lab-waypoints.yaml"
    return {(d["metadata"]["namespace"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(path.read_text()) if d} if path.exists() else {}


def others(lab):
    """pid of every component that is not a waypoint pod: none may restart for a waypoint."""
    st = lab.state()
    return {p["name"]: p["pid"] for p in st["procs"] if not p["name"].startswith("waypoint/")} | \
        {"supervisor": st["supervisor"]["pid"]}


def netns_exists(name):
    return (Path("/run/netns") / name).exists()


def check_pod(lab, pod, gateway, sa):
    """Everything the lab made for one waypoint pod."""
    ns, name = pod["namespace"], pod["name"]
    # its WorkloadEntry is written last, once its process runs
    we = wait_until(lambda: entries(lab).get((ns, name)), f"the WorkloadEntry of {ns}/{name}", timeout=30)
    assert pod["waypoint"] == gateway and pod["serviceAccount"] == sa
    assert netns_exists(pod["netns"]) and Path(pod["cgroup"]).is_dir()
    addr = subprocess.run(["ip", "-n", pod["netns"], "-j", "addr", "show", "eth0"], capture_output=True, text=True)
    assert pod["address"] in addr.stdout
    # the default route through the node's cni0 (.1 of the node's pod subnet)
    route = subprocess.run(["ip", "-n", pod["netns"], "route", "show", "default"], capture_output=True, text=True)
    assert route.stdout.startswith(f"default via {pod['address'].rsplit('.', 1)[0]}.1 dev eth0"), route.stdout
    proc = lab.proc(f"waypoint/{ns}/{name}")
    argv = proc["argv"]
    assert argv[1:3] == ["-m", "waypoint"]
    flags = dict(zip(argv[3::2], argv[4::2]))
    creds = Path(flags["--credential-dir"])
    assert flags == {"--namespace": ns, "--gateway": gateway, "--trust-domain": "cluster.local",
                     "--service-account": sa, "--control-plane": "10.100.0.1:15012", "--credential-dir": str(creds),
                     "--hbone-port": "15008", "--admin": "127.0.0.1:15000", "--metrics": "0.0.0.0:15020",
                     "--ready": "0.0.0.0:15021"}
    assert proc["netns"] == pod["netns"] and proc["cgroup"] == pod["cgroup"]
    # a bootstrap credential for spiffe://cluster.local/ns/NS/sa/SA, signed by the lab CA
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(creds / "roots.pem"), str(creds / "cert.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(creds / "cert.pem")],
                          capture_output=True, text=True).stdout
    assert f"URI:spiffe://cluster.local/ns/{ns}/sa/{sa}" in text
    assert (creds / "key.pem").stat().st_mode & 0o077 == 0
    assert we["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == gateway
    assert we["spec"] == {"address": pod["address"], "labels": we["metadata"]["labels"], "serviceAccount": sa,
                          "node": pod["node"], "networkNamespace": pod["netns"]}
    if REAL_WAYPOINT:
        wait_until(lambda: json.loads(lab.cli("waypoint", "status", "-n", ns, "--name", gateway, "-o", "json")
                                      .stdout)[0]["ready"] >= 1, f"{ns}/{gateway} ready", timeout=60)
        routes = lab.cli("routes", "-n", ns, "-o", "json", check=False)   # its admin port, in its netns
        assert routes.returncode == 0 and isinstance(json.loads(routes.stdout), list), routes.stderr
    else:   # `python -m waypoint` does not exist yet: it exits, and the supervisor starts it again
        wait_until(lambda: lab.proc(f"waypoint/{ns}/{name}")["restarts"] >= 1,
                   f"the supervisor restarting waypoint/{ns}/{name}", timeout=30)


def test_a_gateway_in_the_lab_config_at_up_gets_its_pod(lab):
    [pod] = wait_until(lambda: wp_pods(lab, "prod"), "prod/waypoint's pod", timeout=30)
    assert pod["name"] == "waypoint-0"
    check_pod(lab, pod, "waypoint", "waypoint")
    # every ztunnel knows it, with its identity and its gateway label; not captured at its node
    wl = wait_until(lambda: next((w for w in lab.ztunnel("node1", "/workloads")
                                  if w.get("uid") == "prod/waypoint-0"), None), "ztunnel to learn prod/waypoint-0")
    assert wl["identity"] == "spiffe://cluster.local/ns/prod/sa/waypoint"
    assert wl["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    assert "prod/waypoint-0" not in lab.serving(pod["node"])


def test_apply_scale_and_delete_a_waypoint_without_restarting_anything_else(lab):
    before = others(lab)
    out = lab.cli("waypoint", "apply", "-n", "default", "--enroll-namespace").stdout
    assert out.splitlines() == ["gateway/waypoint created", "namespace/default labeled"]
    [pod] = wait_until(lambda: wp_pods(lab, "default"), "default/waypoint's pod", timeout=30)
    check_pod(lab, pod, "waypoint", "waypoint")
    if not REAL_WAYPOINT:   # `trellis routes` asks the pod's admin port in its netns: nobody listens yet
        routes = lab.cli("routes", "-n", "default", check=False)
        assert routes.returncode == 1 and "waypoint/default/waypoint-0" in routes.stderr
        assert f"in netns {pod['netns']}" in routes.stderr, routes.stderr
    status = json.loads(lab.cli("waypoint", "status", "-n", "default", "-o", "json").stdout)
    assert status[0]["desired"] == 1 and [p["address"] for p in status[0]["pods"]] == [pod["address"]]
    assert status[0]["pods"][0]["identity"] == "spiffe://cluster.local/ns/default/sa/waypoint"
    report = json.loads(lab.cli("lab", "status", "-o", "json", check=False).stdout)
    row = next(p for p in report["pods"] if p["name"] == "waypoint-0" and p["namespace"] == "default")
    assert row["waypoint"] == "waypoint" and row["mesh"] is False and row["ready"] is REAL_WAYPOINT
    assert any(c["name"] == "waypoint/default/waypoint-0" for c in report["components"])
    # a waypoint pod is judged by its readiness port, never by capture at its node
    assert not any("default/waypoint-0 enrolled" in m for m in report["missing"])
    assert any("waypoint pod default/waypoint-0 ready" in m for m in report["missing"]) is not REAL_WAYPOINT
    table = lab.cli("lab", "status", check=False).stdout
    line = next(x for x in table.splitlines() if x.startswith("waypoint-0 ") and " default " in x)
    assert line.split()[-2:] == ["waypoint", "yes" if REAL_WAYPOINT else "no"], line

    lab.cli("waypoint", "apply", "-n", "default", "--replicas", "2")
    two = wait_until(lambda: len(p := wp_pods(lab, "default")) == 2 and p, "two replicas", timeout=30)
    assert [p["name"] for p in two] == ["waypoint-0", "waypoint-1"] and two[0] == pod   # the first kept as it was
    assert {p["node"] for p in two} == {"node1", "node2"}   # round robin
    check_pod(lab, two[1], "waypoint", "waypoint")
    assert set(entries(lab)) >= {("default", "waypoint-0"), ("default", "waypoint-1")}

    lab.cli("waypoint", "apply", "-n", "default", "--replicas", "1")
    wait_until(lambda: len(wp_pods(lab, "default")) == 1, "scaling down to one", timeout=30)
    assert not netns_exists(two[1]["netns"]) and not Path(two[1]["cgroup"]).exists()
    assert ("default", "waypoint-1") not in entries(lab)

    out = lab.cli("waypoint", "delete", "-n", "default").stdout
    assert out.splitlines() == ["namespace/default unlabeled", "gateway/waypoint deleted"]
    wait_until(lambda: not wp_pods(lab, "default"), "the waypoint's pods to go", timeout=30)
    st = lab.state()
    assert not netns_exists(pod["netns"]) and not Path(pod["cgroup"]).exists()
    assert not any(p["name"].startswith("waypoint/default/") for p in st["procs"])
    assert pod["netns"] not in st["netns"] and set(entries(lab)) == {("prod", "waypoint-0")}
    ns = yaml.safe_load((lab.state_dir / "config" / "namespace-cluster-default.yaml").read_text())
    assert "trellis.dev/use-waypoint" not in ns["metadata"]["labels"]
    after = others(lab)
    assert after == before, "a waypoint came and went, and something else restarted"


def test_z_lab_down_removes_waypoint_pods_and_leaves_the_machine_clean(lab):
    pods = wp_pods(lab, "prod")
    assert pods, "prod/waypoint's pod should still be up"
    res = lab.down()
    assert res.returncode == 0, res.stderr
    assert not [n for n in Path("/run/netns").iterdir() if n.name.startswith(f"{lab.prefix}-")]
    assert not (find_cgroup2() / f"{lab.prefix}-lab").exists()
    assert not lab.state_dir.exists()
    leftovers = subprocess.run(["pgrep", "-f", f"--credential-dir {lab.state_dir}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
