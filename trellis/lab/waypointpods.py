"""The lab's waypoint controller: carries out waypointplan's plan (the actor).

Runs inside the lab supervisor (trellis/lab/supervisor.py calls `reconcile` every second),
so that `lab down`, which stops the supervisor first, never races a pod being created.
Every change is made under lab.json's lock and recorded before it is made (write-ahead,
as `lab up` does), so `lab down` removes a waypoint pod however far its creation got.

A pod is made like `lab up` makes one (netns, veth to the node's cni0, address, default
route, cgroup), then gets a bootstrap credential from the lab CA, then its process
(`python -m waypoint ...`, the startup contract of docs/internals.md), and only then its
WorkloadEntry (in `lab-waypoints.yaml` of the live config), so that the node agent finds
a process in the netns when it enrolls the pod. Removal goes the other way round.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from meshcore import ports

from . import cgroups, credentials, net, procs, state, status
from .state import LabState
from .topology import CP_PORT, FABRIC_IP
from .waypointplan import Plan, WaypointPod, plan, waypoints_in, workload_entry

log = logging.getLogger("trellis.lab.waypoints")

ENTRIES_FILE = "lab-waypoints.yaml"   # in the live config dir, next to lab-workloads.yaml
ADMIN = f"127.0.0.1:{ports.ZTUNNEL_ADMIN}"   # the waypoint's admin port is ztunnel's (its own netns)


def proc_name(namespace: str, name: str) -> str:
    return f"waypoint/{namespace}/{name}"


def command(pod: WaypointPod, trust_domain: str, credential_dir: Path) -> list[str]:
    """The waypoint's command line, as its startup contract says."""
    return [sys.executable, "-m", "waypoint", "--namespace", pod.namespace, "--gateway", pod.gateway,
            "--trust-domain", trust_domain, "--service-account", pod.service_account,
            "--control-plane", f"{FABRIC_IP}:{CP_PORT}", "--credential-dir", str(credential_dir),
            "--hbone-port", str(ports.HBONE), "--admin", ADMIN,
            "--metrics", f"0.0.0.0:{ports.METRICS}", "--ready", f"0.0.0.0:{ports.READY}"]


def credential_dir(sdir: Path, namespace: str, name: str) -> Path:
    return sdir / "waypoints" / f"{namespace}_{name}"


class WaypointController:
    def __init__(self, sdir: Path, ready: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.sdir = sdir
        self.shown: set[str] = set()   # problems logged already (a broken Gateway is not logged every second)
        self.ready = ready or (lambda pod: status.waypoint_ready(pod)[0])
        self.listed: set[tuple[str, str]] = set()   # pods with a WorkloadEntry: ready once, listed while they run
        self.last_address: dict[str, str] = {}   # per node, the address of the last waypoint pod started there

    def _report(self, errors: list[str]) -> None:
        for e in errors:
            if e not in self.shown:
                log.error("%s", e)
        self.shown = set(errors)

    def reconcile(self) -> Plan | None:
        """One pass: read the config and lab.json, create and delete pods; None when the
        lab is not (or no longer) up with a mesh."""
        from meshcore.resources import load_dir
        with state.locked(self.sdir):
            st = state.load(self.sdir)
            if st is None or not st.mesh or st.phase != "up":
                return None
            errors: list[str] = []
            procs_by_name = {p.name for p in st.procs}
            for rec in [r for r in st.pods if r.get("waypoint")
                        and proc_name(r["namespace"], r["name"]) not in procs_by_name]:
                # half made (the supervisor died between netns and process): start it over
                log.warning("waypoint pod %s/%s has no process; recreating it", rec["namespace"], rec["name"])
                errors += self.remove(st, rec)
            waypoints, more = waypoints_in(load_dir(self.sdir / "config").resources)
            errors += more
            todo = plan(waypoints, st.pods, st.nodes, st.prefix, self.last_address)
            errors += todo.errors
            if todo.delete:   # callers' ztunnels stop choosing a pod before it goes away
                self.write_entries(st, skip={(r["namespace"], r["name"]) for r in todo.delete})
            for rec in todo.delete:
                log.info("waypoint pod %s/%s: removing", rec["namespace"], rec["name"])
                errors += self.remove(st, rec)
            for pod in todo.create:
                log.info("waypoint pod %s: creating on %s at %s", pod.key, pod.node, pod.address)
                try:
                    self.create(st, pod)
                    # allocation goes on after it only once a pod runs there: the retry of a
                    # failed creation (e.g. the netns of the pod removed just before is still
                    # going away) takes the same address, which no neighbour has cached
                    self.last_address[pod.node] = pod.address
                except (OSError, RuntimeError, ValueError) as exc:   # NetError, CgroupError are RuntimeErrors
                    errors.append(f"waypoint pod {pod.key}: creating it failed: {exc}; retrying")
                    rec = next((r for r in st.pods if r.get("waypoint") and r["name"] == pod.name
                                and r["namespace"] == pod.namespace), None)
                    if rec is not None:
                        errors += self.remove(st, rec)
            self.write_entries(st)
        self._report(errors)
        return todo

    def sandbox(self, st: LabState, pod: WaypointPod) -> Path:
        """The pod's netns, veth, address, route and cgroup (recorded first); its cgroup path."""
        root = Path(st.cgroup_root or "")
        node = next(n for n in st.nodes if n["name"] == pod.node)
        st.pods.append(pod.record(str(root)))
        st.netns.append(pod.netns)
        st.cgroups.append(str(root / pod.cgroup))
        state.save(st, self.sdir)
        net.add_netns(pod.netns)
        net.link_pod(node["netns"], pod.host_veth, pod.netns, pod.address, pod.gateway_ip)
        cgroups.create(root / pod.cgroup)
        return root / pod.cgroup

    def create(self, st: LabState, pod: WaypointPod) -> None:
        root = Path(st.cgroup_root or "")
        self.sandbox(st, pod)
        creds = credential_dir(self.sdir, pod.namespace, pod.name)
        credentials.issue_workload(self.sdir / "ca", st.trust_domain, pod.namespace, pod.service_account, creds)
        env = {"POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace, "POD_IP": pod.address, "NODE_NAME": pod.node}
        st.procs.append(procs.spawn(proc_name(pod.namespace, pod.name), command(pod, st.trust_domain, creds),
                                    netns=pod.netns, cgroup=str(root / pod.cgroup),
                                    log=self.sdir / "pods" / f"{pod.namespace}_{pod.name}.log", env=env))
        state.save(st, self.sdir)

    def remove(self, st: LabState, rec: dict[str, Any]) -> list[str]:
        """Stop the pod's process, delete its netns and cgroup; returns problems."""
        from .down import pids_in_netns
        problems = []
        name = proc_name(rec["namespace"], rec["name"])
        gone = [p for p in st.procs if p.name == name]
        st.procs = [p for p in st.procs if p.name != name]
        state.save(st, self.sdir)   # first: the supervisor must not restart what we stop
        procs.stop(gone)
        cg = Path(rec["cgroup"])
        try:
            cgroups.kill_all(cg)
        except cgroups.CgroupError as exc:
            problems.append(str(exc))
        for pid in pids_in_netns(rec["netns"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            net.del_netns(rec["netns"])   # its veth goes with it
        except net.NetError as exc:
            problems.append(str(exc))
        problems += cgroups.remove_tree(cg)
        if problems:   # keep the records: `lab down` (or the next pass) retries
            return [f"waypoint pod {rec['namespace']}/{rec['name']}: {p}" for p in problems]
        st.pods = [p for p in st.pods if p is not rec]
        st.netns = [n for n in st.netns if n != rec["netns"]]
        st.cgroups = [c for c in st.cgroups if c != str(cg)]
        shutil.rmtree(credential_dir(self.sdir, rec["namespace"], rec["name"]), ignore_errors=True)
        state.save(st, self.sdir)
        return []

    def write_entries(self, st: LabState, skip: set[tuple[str, str]] = frozenset()) -> None:
        """lab-waypoints.yaml: a WorkloadEntry per running waypoint pod once it has been ready
        (rewritten only on change). As an EndpointSlice lists only ready pods: callers' ztunnels
        send a listed replica their connections at once, and one still starting (no certificate
        yet) left them waiting for seconds after `trellis waypoint apply`."""
        live = {p.name for p in st.procs}
        docs, listed = [], set()
        for r in st.pods:
            key = (r["namespace"], r["name"])
            if not r.get("waypoint") or key in skip or proc_name(*key) not in live:
                continue
            if key in self.listed or self.ready(r):
                listed.add(key)
                docs.append(workload_entry(r))
        self.listed = listed
        path = self.sdir / "config" / ENTRIES_FILE
        text = yaml.safe_dump_all(docs, sort_keys=False) if docs else ""
        try:
            old = path.read_text()
        except FileNotFoundError:
            old = ""
        if text == old:
            return
        if not docs:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(f".{ENTRIES_FILE}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)   # the control plane watches this dir: never half a file
