"""`trellis lab up --kubernetes`: the lab as Kubernetes' Deployment controller, scheduler
and kubelet for the waypoint Deployments the control plane creates (controlplane/waypoints.py).

Run by the lab supervisor once a second instead of the config-driven waypoint controller
(waypointpods.py), under lab.json's lock, write-ahead as it is. Each pass lists the
Deployments labelled `trellis.dev/managed-by: trellis-controlplane` from the API server
stand-in (polling: the lab's kubelet does not watch), plans replicas with waypointplan
(pod `<deployment>-<i>`, spread over the nodes, an address of the node's pod subnet), and
for each new replica does, through the API, what the cluster would:
1. the ReplicaSet of the Deployment's template (kubeletspec.replicaset_for), if missing;
2. the Pod, controlled by it, scheduled on the node (Pending, no address yet);
3. the projected volume: a TokenRequest bound to the pod (audience and lifetime from the
   Deployment's `serviceAccountToken` source) and the namespace's root ConfigMap's key
   (a replica waits, as a kubelet does, until the ConfigMap exists);
4. the sandbox (netns, veth, address, cgroup), then the container's command (its
   mountPaths pointing at the files of step 3), then the Pod's status: Running, podIP.
A projected token is refreshed at 80% of its lifetime, as the kubelet does. A replica
that is no longer wanted loses its Pod object first (the control plane stops routing to
it), then its process and sandbox. Not done: rollouts (a changed pod template does not
replace running replicas) and pod restarts by the API (the supervisor restarts the process)."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from . import kube, kubeletspec, procs, state
from .state import LabState
from .waypointplan import Waypoint, WaypointPod, plan
from .waypointpods import WaypointController, proc_name

log = logging.getLogger("trellis.lab.kubelet")

DEPLOYMENTS = "/apis/apps/v1/deployments?labelSelector=trellis.dev%2Fmanaged-by%3Dtrellis-controlplane"
REFRESH_AT = 0.8   # of a projected token's lifetime


class Pending(Exception):
    """This replica cannot start yet (its ConfigMap is missing): retried next pass, quietly."""


def volumes_dir(sdir: Path, namespace: str, name: str) -> Path:
    return sdir / "pods" / f"{namespace}_{name}.volumes"


class KubeletController(WaypointController):
    def __init__(self, sdir: Path) -> None:
        super().__init__(sdir)
        self.netns = ""

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        return kube.request(self.sdir, self.netns, method, path, body)

    def _ok(self, what: str, got: tuple[int, dict], *codes: int) -> dict:
        code, body = got
        if code not in (codes or (200, 201)):
            raise kube.KubeLabError(f"{what}: HTTP {code}: {body.get('message', body)}")
        return body

    def reconcile(self):
        with state.locked(self.sdir):
            st = state.load(self.sdir)
            if st is None or not st.mesh or st.phase != "up":
                return None
            self.netns = f"{st.prefix}-fabric"
            errors: list[str] = []
            names = {p.name for p in st.procs}
            for rec in [r for r in st.pods if r.get("waypoint") and proc_name(r["namespace"], r["name"]) not in names]:
                errors += self.remove(st, rec)   # half made: start it over
            deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in
                           self._ok("listing waypoint Deployments", self.api("GET", DEPLOYMENTS)).get("items", [])}
            wanted = [Waypoint(ns, name, int((d.get("spec") or {}).get("replicas", 1)),
                               ((d["spec"].get("template") or {}).get("spec") or {}).get("serviceAccountName", "default"))
                      for (ns, name), d in sorted(deployments.items())]
            todo = plan(wanted, st.pods, st.nodes, st.prefix)
            errors += todo.errors
            for rec in todo.delete:
                log.info("waypoint pod %s/%s: removing", rec["namespace"], rec["name"])
                errors += self.remove(st, rec)
            for pod in todo.create:
                try:
                    self.create_replica(st, pod, deployments[(pod.namespace, pod.gateway)])
                except Pending as wait:
                    errors.append(f"waypoint pod {pod.key}: waiting: {wait}")
                except (OSError, RuntimeError, ValueError, KeyError) as exc:
                    errors.append(f"waypoint pod {pod.key}: creating it failed: {exc}; retrying")
                    rec = next((r for r in st.pods if r.get("waypoint") and r["name"] == pod.name
                                and r["namespace"] == pod.namespace), None)
                    if rec is not None:
                        errors += self.remove(st, rec)
            for rec in [r for r in st.pods if r.get("kubeToken")]:
                try:
                    self.refresh_token(st, rec)
                except (OSError, RuntimeError) as exc:
                    errors.append(f"waypoint pod {rec['namespace']}/{rec['name']}: token refresh failed: {exc}")
        self._report(errors)
        return todo

    def create_replica(self, st: LabState, pod: WaypointPod, deployment: dict) -> None:
        ns = pod.namespace
        rs = kubeletspec.replicaset_for({"apiVersion": "apps/v1", "kind": "Deployment", **deployment})
        code, have = self.api("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets/{rs['metadata']['name']}")
        rs = have if code == 200 else self._ok("creating the ReplicaSet",
                                               self.api("POST", f"/apis/apps/v1/namespaces/{ns}/replicasets", rs))
        code, cm = self.api("GET", f"/api/v1/namespaces/{ns}/configmaps/trellis-ca-root-cert")
        if code != 200:
            raise Pending(f'configmap "trellis-ca-root-cert" not found in {ns} (the control plane publishes it)')
        self.delete_pod(ns, pod.name)   # a leftover of a creation that failed half way
        obj = kubeletspec.pod_for(rs, pod.name, pod.node, pod.address, uid=str(uuid.uuid4()))
        obj["status"] = {"phase": "Pending"}   # no address until the sandbox is up
        made = self._ok("creating the Pod", self.api("POST", f"/api/v1/namespaces/{ns}/pods", obj))
        files = volumes_dir(self.sdir, ns, pod.name)
        mounts = {}
        for vol in made["spec"].get("volumes") or []:
            token = self.request_token(made, vol)
            d = mounts[vol["name"]] = files / vol["name"]
            d.mkdir(parents=True, exist_ok=True)
            for path, text in kubeletspec.projected_files(vol, token, {"trellis-ca-root-cert": cm}).items():
                _write(d / path, text)
        cgroup = self.sandbox(st, pod)
        rec = next(r for r in st.pods if r.get("waypoint") and r["name"] == pod.name and r["namespace"] == ns)
        rec.update(kubeToken=True, tokenAt=time.time(), uid=made["metadata"]["uid"])
        env = {"POD_NAME": pod.name, "POD_NAMESPACE": ns, "POD_IP": pod.address, "NODE_NAME": pod.node}
        argv = kubeletspec.container_argv(made, mounts, sys.executable)
        st.procs.append(procs.spawn(proc_name(ns, pod.name), argv, netns=pod.netns, cgroup=str(cgroup),
                                    log=self.sdir / "pods" / f"{ns}_{pod.name}.log", env=env))
        state.save(st, self.sdir)
        made["status"] = {"phase": "Running", "podIP": pod.address, "podIPs": [{"ip": pod.address}]}
        self._ok("reporting the Pod running", self.api("PUT", f"/api/v1/namespaces/{ns}/pods/{pod.name}", made))
        log.info("waypoint pod %s: running on %s at %s (ReplicaSet %s)", pod.key, pod.node, pod.address,
                 rs["metadata"]["name"])

    def request_token(self, pod: dict, volume: dict) -> str | None:
        """The TokenRequest for a projected volume's serviceAccountToken source, if it has one."""
        sources = [s for s in (volume.get("projected") or {}).get("sources") or [] if "serviceAccountToken" in s]
        if not sources:
            return None
        ns, sa = pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]
        reply = self._ok("requesting the pod's token", self.api(
            "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", kubeletspec.token_request(pod, sources[0])))
        return reply["status"]["token"]

    def refresh_token(self, st: LabState, rec: dict[str, Any]) -> None:
        code, pod = self.api("GET", f"/api/v1/namespaces/{rec['namespace']}/pods/{rec['name']}")
        if code != 200:
            return
        for vol in pod["spec"].get("volumes") or []:
            for source in kubeletspec.token_sources({"spec": {"volumes": [vol]}}):
                life = source["serviceAccountToken"].get("expirationSeconds", 3600)
                if time.time() - rec["tokenAt"] < REFRESH_AT * life:
                    continue
                token = self.request_token(pod, vol)
                _write(volumes_dir(self.sdir, rec["namespace"], rec["name"]) / vol["name"]
                       / source["serviceAccountToken"]["path"], token or "")
                rec["tokenAt"] = time.time()
                state.save(st, self.sdir)
                log.info("waypoint pod %s/%s: projected token refreshed", rec["namespace"], rec["name"])

    def delete_pod(self, namespace: str, name: str) -> None:
        code, body = self.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")
        if code not in (200, 404):
            raise kube.KubeLabError(f"deleting Pod {namespace}/{name}: HTTP {code}: {body.get('message', body)}")

    def remove(self, st: LabState, rec: dict[str, Any]) -> list[str]:
        """The Pod object first (the control plane stops sending to it), then the process and sandbox."""
        try:
            self.delete_pod(rec["namespace"], rec["name"])
        except (OSError, RuntimeError) as exc:
            return [f"waypoint pod {rec['namespace']}/{rec['name']}: {exc}"]
        problems = super().remove(st, rec)
        if not problems:
            shutil.rmtree(volumes_dir(self.sdir, rec["namespace"], rec["name"]), ignore_errors=True)
        return problems


def _write(path: Path, text: str) -> None:
    """Atomically, as the kubelet swaps a projected volume's files: a reader never sees half a token."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
