"""What is up in a lab: processes alive, admin endpoints healthy, pods enrolled at their
node's ztunnel. Shared by `lab up`'s readiness wait and `lab status`."""
from __future__ import annotations

import json
from typing import Any

from meshcore import admin

from . import state
from .state import LabState
from .topology import CP_ADMIN_PORT, ZT_ADMIN_PORT

READY_PATH = "/healthz/ready"   # a waypoint pod's readiness, on meshcore.ports.READY in its netns


def serving_uids(pods: Any) -> set[str]:
    """uids ("ns/name") of pods whose netns ztunnel holds and serves (its /pods route:
    the node agent handed the netns over and the pod's listeners are bound)."""
    items = pods.get("pods", []) if isinstance(pods, dict) else pods
    return {p["uid"] for p in items or [] if isinstance(p, dict) and p.get("uid") and p.get("state") == "serving"}


def _get(host: str, port: int, path: str, netns: str) -> tuple[Any, str | None]:
    try:
        status, body = admin.http_get(host, port, path, netns=netns, timeout=2.0)
    except OSError as exc:
        return None, f"{host}:{port} in {netns}: {exc.strerror or exc}"
    except Exception as exc:  # a missing netns or a half-written reply: report, keep polling
        return None, f"{host}:{port} in {netns}: {exc}"
    if status != 200:
        return None, f"GET {path} answered {status}"
    try:
        return json.loads(body) if body.strip()[:1] in (b"{", b"[") else body.decode(errors="replace"), None
    except ValueError:
        return body.decode(errors="replace"), None


def waypoint_ready(pod: dict[str, Any]) -> tuple[bool, str | None]:
    """A waypoint pod's readiness (GET /healthz/ready on its readiness port, 200 once it holds a certificate
    and its first config), and why not."""
    from meshcore import ports
    _, err = _get("127.0.0.1", ports.READY, READY_PATH, pod["netns"])
    return err is None, err


def probe(st: LabState, in_mesh: set[str]) -> dict[str, Any]:
    """components: rows of name/pid/up/detail; pods: rows with enrolled; missing: what is not ready.
    `in_mesh`: "ns/name" of the pods that belong in the mesh (`up.mesh_pods`)."""
    comps, missing = [], []
    for proc in st.procs:
        up = state.alive(proc)
        comps.append({"name": proc.name, "pid": proc.pid, "up": up, "restarts": proc.restarts,
                      "lastExit": proc.last_exit, "stopped": proc.held, "netns": proc.netns, "log": proc.log})
        if not up:
            missing.append(f"{proc.name} ({'stopped: `trellis lab start ' + proc.name + '`' if proc.held else 'exited'})")
    supervisor = None
    if st.supervisor is not None:
        supervisor = {"pid": st.supervisor.pid, "up": state.alive(st.supervisor), "log": st.supervisor.log}
        if not supervisor["up"]:
            missing.append(f"supervisor (exited: nothing restarts components; see {st.supervisor.log})")
    enrolled: set[str] = set()
    if st.mesh:
        _, err = _get("127.0.0.1", CP_ADMIN_PORT, "/healthz", f"{st.prefix}-fabric")
        if err:
            missing.append(f"controlplane /healthz ({err})")
        for n in st.nodes:
            _, err = _get("127.0.0.1", ZT_ADMIN_PORT, "/healthz", n["netns"])
            if err:
                missing.append(f"ztunnel/{n['name']} /healthz ({err})")
                continue
            data, err = _get("127.0.0.1", ZT_ADMIN_PORT, "/pods", n["netns"])
            if data is not None:
                enrolled |= serving_uids(data)
    pods = []
    for pod in st.pods:
        key = f"{pod['namespace']}/{pod['name']}"
        # a waypoint pod is reached over its own HBONE listener, not captured (Istio's waypoints
        # are not redirected either): its readiness is its own readiness port, not enrollment
        want = st.mesh and key in in_mesh and not pod.get("waypoint")
        row = dict(pod, mesh=st.mesh and key in in_mesh, enrolled=key in enrolled)
        if want and key not in enrolled:
            missing.append(f"pod {key} enrolled at ztunnel/{pod['node']}")
        if pod.get("waypoint"):
            row["ready"], err = waypoint_ready(pod)
            if err:
                missing.append(f"waypoint pod {key} ready ({err})")
        pods.append(row)
    return {"components": comps, "supervisor": supervisor, "pods": pods, "missing": missing}
