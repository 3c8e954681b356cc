"""`trellis lab up --no-mesh` / `lab down` for real (root): netns, veths, bridges, routes,
cgroups and pod processes, with a private state dir and the `tt-lab` name prefix so that
a demo lab or another engineer's tests on this host are never touched."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trellis.lab.cgroups import attached_bpf, detach_bpf, find_cgroup2

TRELLIS = str(Path(sys.executable).parent / "trellis")
PREFIX = "tt-lab"
LAB = """\
apiVersion: trellis.dev/v1alpha1
kind: Lab
metadata: {name: tt}
spec:
  nodes: [node1, node2]
  pods:
    - {name: client, namespace: default, node: node1, command: [sleep, infinity]}
    - {name: web, namespace: default, node: node2, command: [trellis-echo, --port, "8080"], address: 10.244.2.20}
    - {name: raw, namespace: other, node: node2, command: [trellis-echo, --tcp, --port, "9000"]}
"""


def run(*args, env, input=None, timeout=120):
    return subprocess.run([TRELLIS, *args], capture_output=True, text=True, env={**os.environ, **env},
                          input=input, timeout=timeout)


def ours(prefix: str) -> dict:
    """Everything of ours the kernel could hold (other engineers' objects are filtered out)."""
    mount = find_cgroup2()
    netns = sorted(n.split()[0] for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                        text=True).stdout.splitlines() if n.startswith(prefix))
    links = sorted(json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout),
                   key=lambda link: link["ifname"])
    return {"netns": netns, "cgroups": sorted(p.name for p in mount.iterdir() if p.name.startswith(prefix)),
            "host_links": [link["ifname"] for link in links if link["ifname"].startswith(("vn", "vp", "trellis0", "cni0"))],
            "procs": procs_in_cgroups(f"/{prefix}-lab/"),
            "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text()}


def procs_in_cgroups(marker: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        try:
            zombie = (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" if d.name.isdigit() else True
            if not zombie and marker in (d / "cgroup").read_text():
                found.append(int(d.name))
        except OSError:
            pass
    return found


def force_cleanup(prefix: str) -> None:
    """Last resort if `lab down` itself is broken: the suite must leave nothing behind."""
    for ns in ours(prefix)["netns"]:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    root = find_cgroup2()
    for cg in sorted((d for d in root.glob(f"{prefix}*/**/") if d.is_dir()), key=lambda p: -len(p.parts)):
        for pid in (cg / "cgroup.procs").read_text().split() if (cg / "cgroup.procs").exists() else []:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        time.sleep(0.1)
        try:
            cg.rmdir()
        except OSError:
            pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    (tmp / "lab.yaml").write_text(LAB)
    (tmp / "config").mkdir()
    (tmp / "config" / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n")
    env = {"TRELLIS_LAB_DIR": str(tmp / "state"), "TRELLIS_LAB_PREFIX": PREFIX}
    before = ours(PREFIX)
    res = run("lab", "up", str(tmp), "--no-mesh", env=env)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        yield {"env": env, "dir": tmp, "up": res, "before": before}
    finally:
        down = run("lab", "down", env=env)
        if down.returncode != 0:
            force_cleanup(PREFIX)
        assert down.returncode == 0, down.stdout + down.stderr
        assert ours(PREFIX) == before, "lab down left something behind"


def exec_in(lab, pod, *cmd, input=None, ns=None):
    return run("lab", "exec", pod, *(["--namespace", ns] if ns else []), "--", *cmd, env=lab["env"], input=input)


def curl_until_up(lab, url, attempts=100):
    for _ in range(attempts):
        res = exec_in(lab, "client", "curl", "-s", "-m", "5", url)
        if res.returncode == 0:
            return res
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered: {res.stderr}")


def test_up_prints_steps_and_summary(lab):
    out = lab["up"].stdout
    for step in ("preflight", "network: fabric tt-lab-fabric", "cgroups:", "config:", "processes: pod default/web",
                 "readiness: all ready"):
        assert step in out
    assert "10.244.2.20" in out and "lab down" in out
    assert lab["before"]["ip_forward"] == ours(PREFIX)["ip_forward"]   # never touched on the host


def test_pod_reaches_pod_on_other_node_by_ip(lab):
    res = curl_until_up(lab, "http://10.244.2.20:8080/through-bridges")
    info = json.loads(res.stdout)
    # the client address is the pod's own: routed, not NATed, across node1 -> fabric -> node2
    assert info["pod"] == "web" and info["client"].startswith("10.244.1.2:") and info["path"] == "/through-bridges"
    # and back the other way, from node2 to node1's gateway and node1's fabric address
    for target in ("10.244.1.1", "10.100.0.11"):
        res = exec_in(lab, "web", "sh", "-c", f"echo | socat -t 1 - TCP:{target}:1,connect-timeout=3")
        assert "Connection refused" in res.stderr, res.stderr   # refused = reached and answered with RST


def test_raw_tcp_pod_gets_auto_address(lab):
    st = json.loads((Path(lab["env"]["TRELLIS_LAB_DIR"]) / "lab.json").read_text())
    raw = next(p for p in st["pods"] if p["name"] == "raw")
    assert raw["address"] == "10.244.2.2" and raw["netns"] == "tt-lab-node2-other-raw"
    for _ in range(100):
        res = exec_in(lab, "client", "sh", "-c", f"printf ping | socat -t 2 - TCP:{raw['address']}:9000")
        if res.stdout == "ping":
            break
        time.sleep(0.1)
    assert res.stdout == "ping"


def test_exec_passes_exit_code_stdin_and_runs_in_pod_cgroup(lab):
    assert exec_in(lab, "client", "sh", "-c", "exit 7").returncode == 7
    assert exec_in(lab, "client", "false").returncode == 1
    assert exec_in(lab, "client", "cat", input="hello\n").stdout == "hello\n"
    cg = exec_in(lab, "client", "cat", "/proc/self/cgroup").stdout
    assert f"0::/{PREFIX}-lab/node1/pods/default_client" in cg
    addr = exec_in(lab, "web", "ip", "-4", "-o", "addr", "show", "eth0", ns="default")
    assert "10.244.2.20/24" in addr.stdout
    missing = exec_in(lab, "nope", "true")
    assert missing.returncode == 1 and "lab pods: default/client, default/web, other/raw" in missing.stderr
    notfound = exec_in(lab, "client", "no-such-binary-tt")
    assert notfound.returncode == 1 and "no-such-binary-tt" in notfound.stderr


def test_status_and_config(lab):
    res = run("lab", "status", "-o", "json", env=lab["env"])
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["missing"] == []
    assert {c["name"]: c["up"] for c in report["components"]} == {
        "pod/default/client": True, "pod/default/web": True, "pod/other/raw": True}
    table = run("lab", "status", env=lab["env"]).stdout
    assert "COMPONENT" in table and "pod/default/web" in table
    cfg = Path(lab["env"]["TRELLIS_LAB_DIR"]) / "config"
    assert (cfg / "ns.yaml").exists()
    entries = list(yaml.safe_load_all((cfg / "lab-workloads.yaml").read_text()))
    web = next(e for e in entries if e["metadata"]["name"] == "web")
    assert web["kind"] == "WorkloadEntry" and web["spec"] == {
        "address": "10.244.2.20", "labels": {}, "serviceAccount": "default", "node": "node2",
        "networkNamespace": "tt-lab-node2-default-web"}


def component(lab, name):
    report = json.loads(run("lab", "status", "-o", "json", env=lab["env"]).stdout)
    return next(c for c in report["components"] if c["name"] == name), report


def wait_for(pred, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_process_is_restarted_by_the_supervisor_and_counted(lab):
    web, report = component(lab, "pod/default/web")
    assert web["restarts"] == 0 and report["supervisor"]["up"]
    os.kill(web["pid"], 9)
    again = wait_for(lambda: (c := component(lab, "pod/default/web")[0])["up"] and c["pid"] != web["pid"] and c,
                     "the supervisor to restart the killed app")
    assert again["restarts"] == 1 and again["lastExit"] == "exited"   # not its parent: no exit status
    curl_until_up(lab, "http://10.244.2.20:8080/after-restart")
    table = run("lab", "status", env=lab["env"]).stdout
    assert "RESTARTS" in table and "supervisor pid" in table
    # a second crash of the supervisor's own child: restarted after a backoff, with its signal
    os.kill(again["pid"], 9)
    third = wait_for(lambda: (c := component(lab, "pod/default/web")[0])["up"] and c["restarts"] == 2 and c,
                     "the second restart")
    assert third["lastExit"] == "signal 9 (SIGKILL)"
    curl_until_up(lab, "http://10.244.2.20:8080/after-second-restart")


def test_a_stopped_component_stays_down_until_started(lab):
    res = run("lab", "stop", "pod/other/raw", env=lab["env"])
    assert res.returncode == 0 and "lab start pod/other/raw" in res.stdout, res.stderr
    raw = wait_for(lambda: not (c := component(lab, "pod/other/raw")[0])["up"] and c, "raw to stop")
    time.sleep(3)   # longer than any first-restart backoff: the supervisor must leave it alone
    raw, report = component(lab, "pod/other/raw")
    assert not raw["up"] and raw["stopped"] and raw["restarts"] == 0
    assert any("trellis lab start pod/other/raw" in m for m in report["missing"])
    assert run("lab", "status", env=lab["env"]).returncode == 1
    assert run("lab", "start", "pod/other/raw", env=lab["env"]).returncode == 0
    raw, report = component(lab, "pod/other/raw")
    assert raw["up"] and not raw["stopped"] and raw["restarts"] == 0 and report["missing"] == []
    bad = run("lab", "stop", "nope", env=lab["env"])
    assert bad.returncode == 1 and "no lab component 'nope'" in bad.stderr


def test_second_up_is_idempotent_and_other_dir_is_refused(lab, tmp_path):
    again = run("lab", "up", str(lab["dir"]), "--no-mesh", env=lab["env"])
    assert again.returncode == 0 and "already up" in again.stdout and "supervisor" not in again.stdout
    # a lab whose supervisor died gets a new one from `lab up`, and nothing else changes
    _, report = component(lab, "pod/default/web")
    os.kill(report["supervisor"]["pid"], 9)
    wait_for(lambda: not component(lab, "pod/default/web")[1]["supervisor"]["up"], "the supervisor to die")
    again = run("lab", "up", str(lab["dir"]), "--no-mesh", env=lab["env"])
    assert again.returncode == 0 and "processes: supervisor" in again.stdout, again.stdout + again.stderr
    _, after = component(lab, "pod/default/web")
    assert after["supervisor"]["up"] and after["missing"] == []
    (tmp_path / "lab.yaml").write_text(LAB)
    other = run("lab", "up", str(tmp_path), "--no-mesh", env=lab["env"])
    assert other.returncode == 1 and "a lab is already running" in other.stderr and "`trellis lab down` first" in other.stderr


def test_down_leaves_nothing_and_half_created_lab_is_cleaned(tmp_path):
    """Runs after the module lab is down (file order): a lab whose pod dies at once fails
    `up` with the pod's log, and `down` still removes everything it had created."""
    prefix = "tt-lab-h"
    env = {"TRELLIS_LAB_DIR": str(tmp_path / "state"), "TRELLIS_LAB_PREFIX": prefix}
    before = ours(prefix)
    (tmp_path / "lab.yaml").write_text(LAB.replace('command: [sleep, infinity]',
                                                   'command: [sh, -c, "echo boom-tt >&2; exit 3"]'))
    try:
        res = run("lab", "up", str(tmp_path), "--no-mesh", env=env)
        assert res.returncode == 1
        assert "pod/default/client" in res.stderr and "exited with code 3" in res.stderr and "boom-tt" in res.stderr
        assert "the lab is half up" in res.stderr and "trellis lab down" in res.stderr
        left = ours(prefix)
        assert len(left["netns"]) == 6 and len(left["cgroups"]) == 1
    finally:
        down = run("lab", "down", env=env)
        if down.returncode != 0:
            force_cleanup(prefix)
    assert down.returncode == 0, down.stderr
    assert ours(prefix) == before
    assert not (tmp_path / "state").exists()
    again = run("lab", "down", env=env)
    assert again.returncode == 0 and "no lab running" in again.stdout


CRASHED_AGENT = """
import os, signal, sys
from pathlib import Path
from nodeagent.loader import Programs
p = Programs()
for cg in sys.argv[1:]:
    p.attach(Path(cg), strict=True)
print("attached", flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # a node agent that dies without detaching
"""


def test_down_detaches_bpf_left_by_a_crashed_node_agent(tmp_path):
    prefix = "tt-lab-b"
    env = {"TRELLIS_LAB_DIR": str(tmp_path / "state"), "TRELLIS_LAB_PREFIX": prefix}
    before = ours(prefix)
    (tmp_path / "lab.yaml").write_text("apiVersion: trellis.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: [node1]\n"
                                       "  pods:\n    - {name: p, node: node1, command: [sleep, infinity]}\n")
    try:
        assert run("lab", "up", str(tmp_path), "--no-mesh", env=env).returncode == 0
        cg = find_cgroup2() / f"{prefix}-lab" / "node1" / "pods" / "default_p"
        system = cg.parents[1] / "system"
        agent = subprocess.run([sys.executable, "-c", CRASHED_AGENT, str(cg), str(system)], capture_output=True,
                               text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
        assert "attached" in agent.stdout, agent.stderr[-2000:]
        ids = [p["id"] for p in attached_bpf(cg)]
        assert len(ids) >= 2 and len(attached_bpf(system)) == len(ids)  # outlived their loader
        # the explicit detach `lab down` does before rmdir (here on one cgroup; down does the other)
        assert len(detach_bpf(system)) == len(ids) and attached_bpf(system) == []
    finally:
        down = run("lab", "down", env=env)
        if down.returncode != 0:
            force_cleanup(prefix)
    assert down.returncode == 0, down.stderr
    assert ours(prefix) == before
    for prog_id in ids:   # detached and, with no fd left anywhere, freed by the kernel
        assert subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True).returncode != 0
