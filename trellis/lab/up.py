"""`trellis lab up`: preflight, network, cgroups, identity, config, processes, readiness.

Each step records what it is about to create in lab.json before creating it, so
`trellis lab down` can always undo a lab, however far `up` got. With `mesh=False`
(`--no-mesh`) only the network, cgroups, config and the pods' own commands are set up:
a plain routed lab without control plane, ztunnel or node agent."""
from __future__ import annotations

import dataclasses

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from . import cgroups, kube, net, procs, state
from .state import LabState
from .topology import CP_ADMIN_PORT, CP_PORT, FABRIC_IP, LabPlan, load_lab, plan

Echo = Callable[[str], None]


class LabError(RuntimeError):
    pass


def preflight(mesh: bool) -> Path:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (netns, cgroups, eBPF): run `sudo trellis lab up`")
    if shutil.which("ip") is None:
        raise LabError("`ip` (iproute2) not found; install it: apt-get install iproute2")
    mount = cgroups.find_cgroup2()
    if mesh and importlib.util.find_spec("bcc") is None:
        raise LabError("python module bcc is not importable; install python3-bpfcc and recreate the venv "
                       "with scripts/setup (or use --no-mesh for a lab without eBPF capture)")
    if mesh:
        absent = [m for m in ("controlplane", "ztunnel", "nodeagent") if importlib.util.find_spec(f"{m}.__main__") is None]
        if absent:
            raise LabError(f"{', '.join(absent)} cannot run (`python -m {absent[0]}`: no {absent[0]}/__main__.py); "
                           f"install the full project, or use --no-mesh for the network and pods alone")
    return mount


def workload_entries(p: LabPlan) -> list[dict]:
    return [{"apiVersion": "trellis.dev/v1alpha1", "kind": "WorkloadEntry",
             "metadata": {"name": pod.spec.name, "namespace": pod.spec.namespace, "labels": dict(pod.spec.labels)},
             "spec": {"address": pod.address, "labels": dict(pod.spec.labels),
                      "serviceAccount": pod.spec.service_account, "node": pod.spec.node,
                      "networkNamespace": pod.netns}} for pod in p.pods]


def mesh_pods(config_dir: Path) -> set[str]:
    """"ns/name" of the pods the mesh rules put in the mesh (meshcore.mesh, as the node
    agent and ztunnel decide): they should show up enrolled at their node's ztunnel.
    Objects that do not load are left out here; the control plane reports them."""
    from meshcore.mesh import in_mesh
    from meshcore.resources import load_dir
    return {uid for uid, e in in_mesh(load_dir(config_dir).resources).items() if e.in_mesh}


def _network(p: LabPlan, st: LabState, sdir: Path, echo: Echo) -> None:
    echo(f"network: fabric {p.fabric_netns} (bridge {p.fabric_bridge} {FABRIC_IP}/24)")
    for name in [p.fabric_netns] + [n.netns for n in p.nodes] + [pod.netns for pod in p.pods]:
        if net.netns_exists(name):
            raise LabError(f"network namespace {name} already exists: another lab with prefix {p.prefix!r} "
                           f"is up (state dir elsewhere?); run `trellis lab down` there or choose TRELLIS_LAB_PREFIX")
    st.netns.append(p.fabric_netns); state.save(st, sdir)
    net.add_netns(p.fabric_netns)
    net.setup_fabric(p)
    for n in p.nodes:
        echo(f"network: node {n.name} netns {n.netns} eth0 {n.fabric_ip}, cni0 {n.bridge_ip}/24")
        st.netns.append(n.netns); state.save(st, sdir)
        net.add_netns(n.netns)
        net.setup_node(p, n)
    for pod in p.pods:
        echo(f"network: pod {pod.key} netns {pod.netns} eth0 {pod.address}")
        st.netns.append(pod.netns); state.save(st, sdir)
        net.add_netns(pod.netns)
        net.setup_pod(p, pod)


def _cgroups(p: LabPlan, st: LabState, sdir: Path, echo: Echo) -> None:
    root = Path(st.cgroup_root)
    echo(f"cgroups: {root}")
    dirs = [root / "controlplane", root / "supervisor"] + [root / n.name / "system" for n in p.nodes] + [root / pod.cgroup for pod in p.pods]
    st.cgroups = [str(d) for d in dirs]; state.save(st, sdir)
    for d in dirs:
        cgroups.create(d)


def _identity(p: LabPlan, sdir: Path, echo: Echo) -> None:
    for n in p.nodes:
        echo(f"identity: node credential for {n.name}")
        out = sdir / "nodes" / n.name
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "controlplane", "--ca-dir", str(sdir / "ca"), "--trust-domain",
               p.lab.trust_domain, "--issue-node-credential", n.name, "--out", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise LabError(f"issuing the node credential for {n.name} failed (`{' '.join(cmd)}`):\n"
                           f"{(res.stderr or res.stdout).strip()[-2000:]}")


def _config(lab_dir: Path, p: LabPlan, sdir: Path, echo: Echo) -> None:
    dst = sdir / "config"
    echo(f"config: {lab_dir / 'config'} -> {dst} (+ {len(p.pods)} WorkloadEntry in lab-workloads.yaml)")
    dst.mkdir(parents=True, exist_ok=True)
    if (lab_dir / "config").is_dir():
        for f in sorted((lab_dir / "config").glob("*.y*ml")):
            shutil.copy2(f, dst / f.name)
    tmp = dst / ".lab-workloads.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(workload_entries(p), sort_keys=False))
    os.replace(tmp, dst / "lab-workloads.yaml")  # the control plane watches dst: no half-written file


def _start(st: LabState, sdir: Path, name: str, argv: list[str], netns: str, cgroup: str | None,
           log: Path, env: dict[str, str] | None = None) -> None:
    st.procs.append(procs.spawn(name, argv, netns=netns, cgroup=cgroup, log=log, env=env))
    state.save(st, sdir)


def ztunnel_workers(p: LabPlan) -> list[str]:
    """`--workers` for every ztunnel: the lab file's spec.ztunnelWorkers (or `lab up
    --ztunnel-workers`); without it ztunnel's own default ($TRELLIS_ZTUNNEL_WORKERS or auto).
    kube.py passes the same."""
    return ["--workers", p.lab.ztunnel_workers] if p.lab.ztunnel_workers else []


def _processes(p: LabPlan, st: LabState, sdir: Path, mesh: bool, echo: Echo) -> None:
    root, py, td = Path(st.cgroup_root), sys.executable, p.lab.trust_domain
    if mesh:
        echo(f"processes: control plane in {p.fabric_netns} at {FABRIC_IP}:{CP_PORT}")
        _start(st, sdir, "controlplane", [py, "-m", "controlplane", "--config-dir", str(sdir / "config"),
               "--ca-dir", str(sdir / "ca"), "--trust-domain", td, "--listen", f"{FABRIC_IP}:{CP_PORT}",
               "--admin", f"127.0.0.1:{CP_ADMIN_PORT}",
               *(["--cert-ttl", p.lab.cert_ttl] if p.lab.cert_ttl else [])], p.fabric_netns, str(root / "controlplane"),
               sdir / "controlplane.log")
        for n in p.nodes:
            nd, cg = sdir / "nodes" / n.name, str(root / n.name / "system")
            common = ["--node", n.name, "--control-plane", f"{FABRIC_IP}:{CP_PORT}", "--credential-dir", str(nd),
                      "--run-dir", str(nd)]
            echo(f"processes: ztunnel and nodeagent for {n.name}")
            _start(st, sdir, f"ztunnel/{n.name}", [py, "-m", "ztunnel", *common, "--trust-domain", td,
                                                   *ztunnel_workers(p)],
                   n.netns, cg, nd / "ztunnel.log")
            _start(st, sdir, f"nodeagent/{n.name}", [py, "-m", "nodeagent", *common], n.netns, cg, nd / "nodeagent.log")
    for pod in p.pods:
        echo(f"processes: pod {pod.key}: {' '.join(pod.spec.command)}")
        env = {"POD_NAME": pod.spec.name, "POD_NAMESPACE": pod.spec.namespace, "POD_IP": pod.address,
               "NODE_NAME": pod.spec.node, **pod.spec.env}
        _start(st, sdir, f"pod/{pod.key}", pod.spec.command, pod.netns, str(root / pod.cgroup),
               sdir / "pods" / f"{pod.spec.namespace}_{pod.spec.name}.log", env)


def _supervise(st: LabState, sdir: Path, echo: Echo) -> None:
    """One supervisor per lab restarts whatever exits from now on (trellis/lab/supervisor.py)."""
    cgroup = str(Path(st.cgroup_root) / "supervisor")
    echo(f"processes: supervisor (restarts components that exit; log {sdir / 'supervisor.log'})")
    st.supervisor = procs.spawn("supervisor", [sys.executable, "-m", "trellis.lab.supervisor", "--state-dir", str(sdir)],
                                netns=None, cgroup=cgroup, log=sdir / "supervisor.log")
    state.save(st, sdir)


def _check_alive(st: LabState) -> None:
    for proc in st.procs:
        if not state.alive(proc):
            code = procs.exited_code(proc)
            raise LabError(f"{proc.name} (pid {proc.pid}) exited{f' with code {code}' if code is not None else ''}; "
                           f"last lines of {proc.log}:\n{procs.tail(proc.log)}")


def _ready(p: LabPlan, st: LabState, sdir: Path, echo: Echo, timeout: float) -> None:
    from .status import probe  # the same probes `lab status` shows
    want = mesh_pods(sdir / "config")
    # a command that fails at once (bad flag, port taken) must fail `up`, not look ready
    settle_until = time.monotonic() + 1.0
    deadline, shown = time.monotonic() + timeout, ""
    while True:
        _check_alive(st)
        report = probe(st, want)
        missing = report["missing"]
        line = f"readiness: waiting for {', '.join(missing)}" if missing else "readiness: all ready"
        if line != shown:
            echo(line)
            shown = line
        if not missing and time.monotonic() >= settle_until:
            return
        if time.monotonic() > deadline:
            raise LabError(f"not ready after {timeout:.0f}s: {', '.join(missing)}; check the logs under {sdir} "
                           f"(`trellis lab status`), then `trellis lab down`")
        time.sleep(0.5)


def up(lab_dir: Path, *, mesh: bool = True, echo: Echo = print, ready_timeout: float = 60.0,
       kubernetes: bool = False, ztunnel_workers: str | None = None) -> tuple[LabState, LabPlan]:
    """kubernetes: shaped like a cluster (kube.py): kubelet cgroups, an API server, the
    components in Kubernetes mode. ztunnel_workers overrides the lab file's spec.ztunnelWorkers."""
    lab_dir = Path(lab_dir).resolve()
    sdir = state.state_dir()
    lab = load_lab(lab_dir)
    if ztunnel_workers is not None:
        lab = dataclasses.replace(lab, ztunnel_workers=ztunnel_workers)
    p = plan(lab, state.prefix())
    if kubernetes:
        if not mesh:
            raise LabError("--kubernetes runs the mesh from an API server: it does not go with --no-mesh")
        p = kube.kubelet_plan(p)
    existing = state.load(sdir)
    if existing is not None:
        if Path(existing.lab_dir) == lab_dir and existing.phase == "up":
            echo(f"lab from {lab_dir} is already up (state {sdir})")
            if existing.supervisor is None or not state.alive(existing.supervisor):
                with state.locked(sdir):   # supervision died (or predates it): bring it back
                    existing = state.load(sdir) or existing
                    _supervise(existing, sdir, echo)
            return existing, p
        raise LabError(f"a lab is already running (from {existing.lab_dir}, state {sdir}, phase {existing.phase}); "
                       f"`trellis lab down` first")
    echo("preflight: root, cgroup2, ip" + (", bcc" if mesh else ""))
    mount = preflight(mesh)
    st = LabState(lab_dir=str(lab_dir), prefix=p.prefix, trust_domain=lab.trust_domain, cgroup_mount=str(mount),
                  cgroup_root=str(mount / p.cgroup_root), mesh=mesh, kubernetes=kubernetes,
                  nodes=[{"name": n.name, "netns": n.netns, "fabricIP": n.fabric_ip, "podCIDR": n.pod_cidr}
                         for n in p.nodes],
                  pods=[{"name": q.spec.name, "namespace": q.spec.namespace, "node": q.spec.node,
                         "address": q.address, "netns": q.netns, "cgroup": str(mount / p.cgroup_root / q.cgroup)}
                        for q in p.pods])
    state.save(st, sdir)
    try:
        _network(p, st, sdir, echo)
        _cgroups(p, st, sdir, echo)
        if mesh and not kubernetes:
            _identity(p, sdir, echo)
        _config(lab_dir, p, sdir, echo)
        if kubernetes:
            kube.start(p, st, sdir, lambda name, argv, netns, cg, log: _start(st, sdir, name, argv, netns, cg, log),
                       lambda: _check_alive(st), echo)
        _processes(p, st, sdir, mesh and not kubernetes, echo)
        _ready(p, st, sdir, echo, ready_timeout)
        _supervise(st, sdir, echo)
    except (LabError, OSError, RuntimeError) as exc:  # NetError, CgroupError, KubeLabError are RuntimeErrors
        raise LabError(f"{exc}\nthe lab is half up: look with `trellis lab status`, "
                       f"remove it with `trellis lab down`") from exc
    st.phase = "up"
    state.save(st, sdir)
    return st, p
