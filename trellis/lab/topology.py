"""The lab topology: `lab.yaml` (kind Lab) parsed, validated and turned into a plan of
names and addresses (docs/internals.md "Lab layout"). Pure: no kernel, no files beyond
reading the YAML, so every naming and addressing rule is table-tested."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshcore import ports

API_VERSION = "trellis.dev/v1alpha1"
FABRIC_CIDR = ipaddress.ip_network("10.100.0.0/24")
FABRIC_IP = "10.100.0.1"
CP_PORT, CP_ADMIN_PORT, ZT_ADMIN_PORT = ports.CONTROL_PLANE, ports.CONTROL_PLANE_ADMIN, ports.ZTUNNEL_ADMIN
MAX_NODES = 200  # node N takes fabric address .(10+N) and pod subnet 10.244.N.0/24
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POD_KEYS = {"name", "namespace", "node", "serviceAccount", "labels", "command", "address", "env"}
_SPEC_KEYS = {"trustDomain", "certTTL", "ztunnelWorkers", "nodes", "pods"}
_DURATION = re.compile(r"^[1-9][0-9]*(s|m|h)$")


class LabConfigError(ValueError):
    """All problems found in one lab file, each on its own line."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class PodSpec:
    name: str
    namespace: str
    node: str
    service_account: str
    labels: dict[str, str]
    command: list[str]
    address: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Lab:
    name: str
    trust_domain: str
    nodes: list[str]
    pods: list[PodSpec]
    source: str = "lab.yaml"
    cert_ttl: str | None = None   # workload certificate lifetime, e.g. "30s" (control plane default: 24h)
    ztunnel_workers: str | None = None   # each ztunnel's --workers ("auto" or 1-64); None: ztunnel's default


@dataclass(frozen=True)
class NodePlan:
    name: str
    index: int
    netns: str
    fabric_ip: str       # on the fabric bridge
    fabric_veth: str     # the node's veth end inside the fabric netns
    pod_cidr: str
    bridge_ip: str       # cni0, the pods' default gateway


@dataclass(frozen=True)
class PodPlan:
    spec: PodSpec
    netns: str
    address: str
    gateway: str
    host_veth: str       # the pod's veth end inside the node netns
    cgroup: str          # relative to the lab cgroup root

    @property
    def key(self) -> str:
        return f"{self.spec.namespace}/{self.spec.name}"


@dataclass(frozen=True)
class LabPlan:
    lab: Lab
    prefix: str
    fabric_netns: str
    fabric_bridge: str
    cgroup_root: str     # directory name under the cgroup2 mount
    nodes: list[NodePlan]
    pods: list[PodPlan]

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def find_pod(self, name: str, namespace: str | None = None) -> PodPlan:
        hits = [p for p in self.pods if p.spec.name == name and namespace in (None, p.spec.namespace)]
        if len(hits) == 1:
            return hits[0]
        known = ", ".join(p.key for p in self.pods) or "none"
        if not hits:
            raise KeyError(f"no pod {name!r}{f' in namespace {namespace!r}' if namespace else ''}; lab pods: {known}")
        raise KeyError(f"pod name {name!r} is in several namespaces; pass --namespace (lab pods: {known})")


def _str_map(value: Any, where: str, errors: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        errors.append(f"{where}: must be a map of strings to strings")
        return {}
    return {k: str(v) for k, v in value.items()}


def _pod(raw: Any, i: int, nodes: list[str], src: str, errors: list[str]) -> PodSpec | None:
    where = f"{src}: spec.pods[{i}]"
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a map with name, node, command, ...")
        return None
    for key in sorted(set(raw) - _POD_KEYS):
        errors.append(f"{where}.{key}: unknown field (known: {', '.join(sorted(_POD_KEYS))})")
    name, ns = raw.get("name"), raw.get("namespace", "default")
    for fld, val in (("name", name), ("namespace", ns)):
        if not isinstance(val, str) or not _DNS_LABEL.match(val):
            errors.append(f"{where}.{fld}: {val!r} must be a DNS label (lowercase letters, digits, '-')")
    node = raw.get("node")
    if node not in nodes:
        errors.append(f"{where}.node: {node!r} is not one of spec.nodes ({', '.join(nodes) or 'none'}); "
                      f"add it there or fix the pod")
    sa = raw.get("serviceAccount", "default")
    if not isinstance(sa, str) or not _DNS_LABEL.match(sa):
        errors.append(f"{where}.serviceAccount: {sa!r} must be a DNS label")
    cmd = raw.get("command")
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, (str, int)) for c in cmd):
        errors.append(f"{where}.command: must be a non-empty list of strings, e.g. [\"sleep\", \"infinity\"]")
        cmd = []
    addr = raw.get("address")
    if addr is not None:
        try:
            ipaddress.IPv4Address(str(addr))
        except ValueError:
            errors.append(f"{where}.address: {addr!r} is not an IPv4 address")
    return PodSpec(name=str(name), namespace=str(ns), node=str(node), service_account=str(sa),
                   labels=_str_map(raw.get("labels"), f"{where}.labels", errors),
                   command=[str(c) for c in cmd], address=None if addr is None else str(addr),
                   env=_str_map(raw.get("env"), f"{where}.env", errors))


def parse_lab(doc: Any, source: str = "lab.yaml") -> Lab:
    """Validate one Lab document; raises LabConfigError listing every problem."""
    errors: list[str] = []
    if not isinstance(doc, dict):
        raise LabConfigError([f"{source}: must be a YAML map with apiVersion, kind: Lab, spec"])
    if doc.get("apiVersion") != API_VERSION:
        errors.append(f"{source}: apiVersion: must be {API_VERSION!r}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != "Lab":
        errors.append(f"{source}: kind: must be 'Lab', got {doc.get('kind')!r}")
    meta = doc.get("metadata") or {}
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise LabConfigError(errors + [f"{source}: spec: missing; it holds trustDomain, nodes and pods"])
    for key in sorted(set(spec) - _SPEC_KEYS):
        errors.append(f"{source}: spec.{key}: unknown field (known: {', '.join(sorted(_SPEC_KEYS))})")
    td = spec.get("trustDomain", "cluster.local")
    if not isinstance(td, str) or not re.match(r"^[a-z0-9.-]+$", td):
        errors.append(f"{source}: spec.trustDomain: {td!r} must be lowercase letters, digits, '.', '-'")
    cert_ttl = spec.get("certTTL")
    if cert_ttl is not None and not (isinstance(cert_ttl, str) and _DURATION.match(cert_ttl)):
        errors.append(f"{source}: spec.certTTL: {cert_ttl!r} must be a duration such as 90s, 10m or 24h")
    workers = spec.get("ztunnelWorkers")
    if workers is not None:
        if workers != "auto" and not (isinstance(workers, int) and not isinstance(workers, bool) and 1 <= workers <= 64):
            errors.append(f"{source}: spec.ztunnelWorkers: {workers!r} must be a number of worker processes "
                          f"from 1 to 64, or auto")
        workers = str(workers)
    nodes = spec.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        errors.append(f"{source}: spec.nodes: must be a non-empty list of node names, e.g. [node1, node2]")
        nodes = []
    for i, n in enumerate(nodes):
        if not isinstance(n, str) or not _DNS_LABEL.match(n):
            errors.append(f"{source}: spec.nodes[{i}]: {n!r} must be a DNS label")
    if len(set(map(str, nodes))) != len(nodes):
        errors.append(f"{source}: spec.nodes: node names must be unique")
    if len(nodes) > MAX_NODES:
        errors.append(f"{source}: spec.nodes: at most {MAX_NODES} nodes fit the lab address plan")
    raw_pods = spec.get("pods") or []
    if not isinstance(raw_pods, list):
        errors.append(f"{source}: spec.pods: must be a list")
        raw_pods = []
    pods = [p for i, raw in enumerate(raw_pods) if (p := _pod(raw, i, nodes, source, errors))]
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(pods):
        if (p.namespace, p.name) in seen:
            errors.append(f"{source}: spec.pods[{i}]: pod {p.namespace}/{p.name} is declared twice")
        seen.add((p.namespace, p.name))
    if errors:
        raise LabConfigError(errors)
    return Lab(name=str(meta.get("name", "lab")), trust_domain=td, nodes=[str(n) for n in nodes],
               pods=pods, source=source, cert_ttl=cert_ttl, ztunnel_workers=workers)


def load_lab(lab_dir: Path) -> Lab:
    path = Path(lab_dir) / "lab.yaml"
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabConfigError([f"{path}: cannot read: {exc.strerror}; pass the directory holding lab.yaml"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LabConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_lab(doc, str(path))


def plan(lab: Lab, prefix: str = "trellis") -> LabPlan:
    """Names and addresses for everything `lab up` creates; raises LabConfigError when a
    given pod address does not fit its node's subnet or is taken."""
    nodes = []
    for i, name in enumerate(lab.nodes, start=1):
        nodes.append(NodePlan(name=name, index=i, netns=f"{prefix}-{name}",
                              fabric_ip=str(FABRIC_CIDR[10 + i]), fabric_veth=f"vn{i}",
                              pod_cidr=f"10.244.{i}.0/24", bridge_ip=f"10.244.{i}.1"))
    by_name = {n.name: n for n in nodes}
    errors: list[str] = []
    taken: dict[str, set[str]] = {n.name: set() for n in nodes}
    for i, p in enumerate(lab.pods):
        if p.address is None:
            continue
        net = ipaddress.ip_network(by_name[p.node].pod_cidr)
        ip = ipaddress.ip_address(p.address)
        if ip not in net or ip in (net.network_address, net.broadcast_address, net[1]):
            errors.append(f"{lab.source}: spec.pods[{i}].address: {p.address} is not a free host address in "
                          f"{p.node}'s pod subnet {net} (.1 is the gateway)")
        elif p.address in taken[p.node]:
            errors.append(f"{lab.source}: spec.pods[{i}].address: {p.address} is already used by another pod")
        taken[p.node].add(p.address)
    if errors:
        raise LabConfigError(errors)
    pods, counters = [], {n.name: 0 for n in nodes}
    for p in lab.pods:
        node = by_name[p.node]
        counters[p.node] += 1
        address = p.address
        if address is None:
            host = 2
            while f"10.244.{node.index}.{host}" in taken[p.node]:
                host += 1
            if host > 254:
                raise LabConfigError([f"{lab.source}: node {p.node}: more than 253 pods do not fit 10.244.{node.index}.0/24"])
            address = f"10.244.{node.index}.{host}"
            taken[p.node].add(address)
        pods.append(PodPlan(spec=p, netns=f"{prefix}-{p.node}-{p.namespace}-{p.name}", address=address,
                            gateway=node.bridge_ip, host_veth=f"vp{counters[p.node]}",
                            cgroup=f"{p.node}/pods/{p.namespace}_{p.name}"))
    return LabPlan(lab=lab, prefix=prefix, fabric_netns=f"{prefix}-fabric", fabric_bridge="trellis0",
                   cgroup_root=f"{prefix}-lab", nodes=nodes, pods=pods)
