"""Which waypoint pods the lab should run, and what to change to get there (pure).

Input: the waypoints declared in the live config (Gateways of class `trellis-waypoint`,
read by `waypoints_in`) and the waypoint pods lab.json records; output: the pods to
create (with node, address, veth, netns and cgroup chosen) and those to delete. No
kernel, no files: the actor (trellis/lab/waypointpods.py) carries a plan out, and every
naming, placement and scaling rule is table-tested here.

Rules, as a Deployment of the waypoint would behave:
- replica i of gateway G in namespace NS is pod `G-i` (i from 0); scaling down removes
  the highest indexes first, scaling up adds the lowest missing ones;
- replicas are spread round robin over the nodes, starting at a node that depends on the
  gateway (so two single-replica waypoints do not both land on the first node);
- a pod whose ServiceAccount changed is replaced (a new identity needs a new pod);
- an address is the next free one of the node's pod subnet after the last one handed out
  there (`last`; static lab pods included), wrapping round, as the CNI host-local IPAM
  allocates: an address just freed is not reused at once, since the pods on that node
  still hold its old MAC in their neighbour caches (a new pod with that address was out
  of their reach for seconds); a host veth is the lowest free `vwN` on the node.
"""
from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

from meshcore.mesh import GATEWAY_NAME_LABEL
from meshcore.resources import AMBIENT_LABEL


GATEWAY_LABEL = GATEWAY_NAME_LABEL   # Istio's label on a waypoint's pods
SERVICE_ACCOUNT_ANNOTATION = "trellis.dev/service-account"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Waypoint:
    """A waypoint the config declares."""
    namespace: str
    name: str
    replicas: int
    service_account: str


@dataclass(frozen=True)
class WaypointPod:
    namespace: str
    name: str
    gateway: str
    service_account: str
    node: str
    address: str
    gateway_ip: str      # the node's cni0 address, the pod's default route
    netns: str
    host_veth: str       # in the node netns
    cgroup: str          # relative to the lab cgroup root

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def record(self, cgroup_root: str) -> dict[str, Any]:
        """The pod's entry in lab.json's `pods` (what `lab status`, `lab exec` read)."""
        return {"name": self.name, "namespace": self.namespace, "node": self.node, "address": self.address,
                "netns": self.netns, "cgroup": f"{cgroup_root}/{self.cgroup}", "waypoint": self.gateway,
                "serviceAccount": self.service_account, "hostVeth": self.host_veth}


@dataclass
class Plan:
    create: list[WaypointPod] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)   # lab.json pod records
    errors: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.create and not self.delete


def waypoints_in(resources: Iterable[Any]) -> tuple[list[Waypoint], list[str]]:
    """The waypoints among loaded resources (meshcore Resource objects), and problems."""
    from meshcore.resources.gateway import waypoint_replicas
    out, errors = [], []
    for r in resources:
        if r.kind != "Gateway" or not getattr(r.spec, "is_waypoint", False):
            continue
        sa = (r.annotations or {}).get(SERVICE_ACCOUNT_ANNOTATION, r.name)
        if not isinstance(sa, str) or not _DNS_LABEL.match(sa):
            errors.append(f"{r.source}: Gateway {r.namespace}/{r.name}: metadata.annotations"
                          f"[{SERVICE_ACCOUNT_ANNOTATION}]: {sa!r} must be a DNS label")
            continue
        out.append(Waypoint(r.namespace, r.name, waypoint_replicas(r.annotations or {}), sa))
    return sorted(out, key=lambda w: (w.namespace, w.name)), errors


def workload_entry(rec: dict[str, Any]) -> dict[str, Any]:
    """A waypoint pod's WorkloadEntry, from its lab.json record (`WaypointPod.record`):
    labelled as its Gateway's replica (the label ztunnel and the control plane look for)
    and kept out of capture (`dataplane-mode: none`, as Istio labels its waypoint pods):
    the waypoint terminates and originates HBONE itself on the HBONE port of its own netns, where
    an enrolled pod's ztunnel would bind its inbound listener (meshcore.podsockets). Callers'
    ztunnels reach every listed replica over HBONE all the same (meshcore.state.waypoints)."""
    labels = {GATEWAY_LABEL: rec["waypoint"], AMBIENT_LABEL: "none"}
    return {"apiVersion": "trellis.dev/v1alpha1", "kind": "WorkloadEntry",
            "metadata": {"name": rec["name"], "namespace": rec["namespace"], "labels": dict(labels)},
            "spec": {"address": rec["address"], "labels": dict(labels), "serviceAccount": rec["serviceAccount"],
                     "node": rec["node"], "networkNamespace": rec["netns"]}}


def _first_node(w: Waypoint, n: int) -> int:
    # stable across runs and processes (hash() is salted per process)
    return zlib.crc32(f"{w.namespace}/{w.name}".encode()) % n


def _free_address(node: dict[str, Any], used: set[str], last: str | None = None) -> str | None:
    net = ipaddress.ip_network(node["podCIDR"])
    hosts = range(2, net.num_addresses - 1)   # .0 network, .1 cni0, last broadcast
    start = 0
    if last is not None and ipaddress.ip_address(last) in net:
        start = int(ipaddress.ip_address(last)) - int(net.network_address) - 1   # the one after `last`
    for i in range(len(hosts)):
        addr = str(net[hosts[(start + i) % len(hosts)]])
        if addr not in used:
            return addr
    return None


def _free_veth(taken: set[str]) -> str:
    i = 0
    while f"vw{i}" in taken:
        i += 1
    return f"vw{i}"


def plan(waypoints: list[Waypoint], pods: list[dict[str, Any]], nodes: list[dict[str, Any]], prefix: str,
         last: dict[str, str] | None = None) -> Plan:
    """`pods`: lab.json's pod records (static pods and waypoint pods, the latter carrying
    `waypoint`); `nodes`: lab.json's nodes (name, netns, podCIDR); `last`: per node, the
    address last handed out there (allocation goes on after it)."""
    out = Plan()
    if not nodes:
        out.errors.append("the lab has no nodes to run waypoint pods on")
        return out
    current = {(p["namespace"], p["name"]): p for p in pods if p.get("waypoint")}
    static = {(p["namespace"], p["name"]) for p in pods if not p.get("waypoint")}
    want: dict[tuple[str, str], tuple[Waypoint, int]] = {}
    for w in waypoints:
        for i in range(w.replicas):
            key = (w.namespace, f"{w.name}-{i}")
            if key in static:
                out.errors.append(f"waypoint {w.namespace}/{w.name}: replica {i} would be pod {key[1]}, "
                                  f"which is a lab pod of lab.yaml; rename the Gateway")
                continue
            want[key] = (w, i)
    for key, rec in sorted(current.items()):
        spec = want.get(key)
        if spec is None or spec[0].name != rec["waypoint"] or spec[0].service_account != rec.get("serviceAccount"):
            out.delete.append(rec)
    gone = {(r["namespace"], r["name"]) for r in out.delete}
    keep = [p for p in pods if (p["namespace"], p["name"]) not in gone]
    used = {n["name"]: {p["address"] for p in keep if p["node"] == n["name"]} for n in nodes}
    veths = {n["name"]: {p["hostVeth"] for p in keep if p["node"] == n["name"] and p.get("hostVeth")} for n in nodes}
    by_name = {n["name"]: n for n in nodes}
    have = {(p["namespace"], p["name"]) for p in keep}
    for key, (w, i) in sorted(want.items(), key=lambda kv: (kv[0][0], kv[1][0].name, kv[1][1])):
        if key in have:
            continue
        node = nodes[(_first_node(w, len(nodes)) + i) % len(nodes)]
        addr = _free_address(node, used[node["name"]], (last or {}).get(node["name"]))
        if addr is None:
            out.errors.append(f"waypoint {w.namespace}/{w.name}: node {node['name']}'s pod subnet "
                              f"{node['podCIDR']} is full")
            continue
        veth = _free_veth(veths[node["name"]])
        used[node["name"]].add(addr)
        veths[node["name"]].add(veth)
        name = key[1]
        out.create.append(WaypointPod(
            namespace=w.namespace, name=name, gateway=w.name, service_account=w.service_account,
            node=node["name"], address=addr, gateway_ip=str(ipaddress.ip_network(by_name[node["name"]]["podCIDR"])[1]),
            netns=f"{prefix}-{node['name']}-{w.namespace}-{name}", host_veth=veth,
            cgroup=f"{node['name']}/pods/{w.namespace}_{name}"))
    return out
