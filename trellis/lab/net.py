"""The lab network, built with `ip` (iproute2): a fabric netns with a bridge, a netns per
node routing between the fabric and its pod bridge, a netns per pod. Every link is created
directly inside a lab netns (`ip -n`), so nothing ever appears in the host netns and
parallel labs with different prefixes cannot collide on interface names."""
from __future__ import annotations

import subprocess
from pathlib import Path

from .topology import FABRIC_CIDR, LabPlan, NodePlan, PodPlan

NETNS_DIR = Path("/run/netns")


class NetError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> str:
    cmd = ["ip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NetError(f"`{' '.join(cmd)}` failed: {res.stderr.strip() or res.returncode}")
    return res.stdout


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str) -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix + "-"))
    except FileNotFoundError:
        return []


def add_netns(name: str) -> None:
    if netns_exists(name):
        raise NetError(f"network namespace {name} already exists; a previous lab was not torn down, "
                       f"run `trellis lab down` (or `ip netns del {name}`)")
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")


def del_netns(name: str) -> None:
    if netns_exists(name):
        ip("netns", "del", name)


def enable_forwarding(netns: str) -> None:
    # /proc/sys/net is per netns; `ip netns exec` makes sysctl see the lab netns, never the host's
    res = subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise NetError(f"enabling IPv4 forwarding in {netns} failed: {res.stderr.strip()}")


def setup_fabric(p: LabPlan) -> None:
    f = p.fabric_netns
    ip("-n", f, "link", "add", p.fabric_bridge, "type", "bridge")
    ip("-n", f, "addr", "add", f"10.100.0.1/{FABRIC_CIDR.prefixlen}", "dev", p.fabric_bridge)
    ip("-n", f, "link", "set", p.fabric_bridge, "up")


def setup_node(p: LabPlan, n: NodePlan) -> None:
    f = p.fabric_netns
    ip("-n", f, "link", "add", n.fabric_veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns)
    ip("-n", f, "link", "set", n.fabric_veth, "master", p.fabric_bridge, "up")
    ip("-n", n.netns, "addr", "add", f"{n.fabric_ip}/{FABRIC_CIDR.prefixlen}", "dev", "eth0")
    ip("-n", n.netns, "link", "set", "eth0", "up")
    ip("-n", n.netns, "link", "add", "cni0", "type", "bridge")
    ip("-n", n.netns, "addr", "add", f"{n.bridge_ip}/24", "dev", "cni0")
    ip("-n", n.netns, "link", "set", "cni0", "up")
    enable_forwarding(n.netns)
    for other in p.nodes:
        if other.name != n.name:
            ip("-n", n.netns, "route", "add", other.pod_cidr, "via", other.fabric_ip)
    # the fabric is the cluster network: pods that talk to the control plane themselves
    # (waypoints, as in a cluster) need the way back to their node's pod subnet
    ip("-n", f, "route", "add", n.pod_cidr, "via", n.fabric_ip)


def setup_pod(p: LabPlan, pod: PodPlan) -> None:
    link_pod(p.node(pod.spec.node).netns, pod.host_veth, pod.netns, pod.address, pod.gateway)


def link_pod(node_netns: str, host_veth: str, pod_netns: str, address: str, gateway: str) -> None:
    """A veth from the node's cni0 bridge to eth0 in the pod netns, the pod's address and
    its default route (also used for the waypoint pods the lab adds at runtime)."""
    ip("-n", node_netns, "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", pod_netns)
    ip("-n", node_netns, "link", "set", host_veth, "master", "cni0", "up")
    ip("-n", pod_netns, "addr", "add", f"{address}/24", "dev", "eth0")
    ip("-n", pod_netns, "link", "set", "eth0", "up")
    ip("-n", pod_netns, "route", "add", "default", "via", gateway)
