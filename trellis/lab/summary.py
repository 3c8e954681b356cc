"""Human summaries of a lab: the table after `lab up` and the `lab status` view."""
from __future__ import annotations

from typing import Any

from ..output import table
from . import state
from .state import LabState

NODE_COLUMNS = [("NODE", "name"), ("NETNS", "netns"), ("FABRIC IP", "fabricIP"), ("POD CIDR", "podCIDR")]
POD_COLUMNS = [("POD", "name"), ("NAMESPACE", "namespace"), ("NODE", "node"), ("ADDRESS", "address"),
               ("MESH", "mesh"), ("ENROLLED", "enrolled"), ("WAYPOINT", "waypoint"), ("READY", "ready")]
COMPONENT_COLUMNS = [("COMPONENT", "name"), ("PID", "pid"), ("UP", "up"), ("RESTARTS", "restarts"),
                     ("LAST EXIT", "lastExit"), ("NETNS", "netns"), ("LOG", "log")]


def status_tables(st: LabState, report: dict[str, Any]) -> str:
    parts = [f"lab from {st.lab_dir} ({'mesh' if st.mesh else 'no mesh'}, phase {st.phase})", "",
             table(report["components"], COMPONENT_COLUMNS), "", table(report["pods"], POD_COLUMNS)]
    sup = report.get("supervisor")
    if sup:
        parts[1:1] = [f"supervisor pid {sup['pid']} ({'up' if sup['up'] else 'NOT RUNNING'}), log {sup['log']}"]
    if report["missing"]:
        parts += ["", "not ready: " + "; ".join(report["missing"])]
    return "\n".join(parts)


def after_up(st: LabState) -> str:
    from .status import probe
    from .up import mesh_pods
    report = probe(st, mesh_pods(state.state_dir() / "config"))
    first = st.pods[0]["name"] if st.pods else "POD"
    hint = [
        "", "try:",
        f"  trellis lab exec {first} -- curl -s http://10.96.0.10/    # through the mesh (service VIP)",
        "  trellis workloads | trellis services | trellis certs | trellis policies",
        "  trellis lab status",
        "  trellis lab down",
    ] if st.mesh else [
        "", "try (no mesh: pod IPs are routed plainly between nodes):",
        f"  trellis lab exec {first} -- curl -s http://{st.pods[-1]['address'] if st.pods else 'POD_IP'}:8080/",
        "  trellis lab status",
        "  trellis lab down",
    ]
    return "\n".join(["", table(st.nodes, NODE_COLUMNS), "", table(report["pods"], POD_COLUMNS), *hint])
