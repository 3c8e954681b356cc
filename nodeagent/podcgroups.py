"""A Kubernetes pod's cgroup and network namespace, found from its UID the kubelet's way.

The kubelet names pod cgroups after the pod UID, under a QoS level (guaranteed pods sit
directly under the kubepods root), in one of two layouts depending on its cgroup driver:
  systemd:  kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _ for ->.slice
            kubepods.slice/kubepods-pod<uid_>.slice                     (guaranteed)
  cgroupfs: kubepods/<qos>/pod<uid>,  kubepods/pod<uid>                   (guaranteed)
(pkg/kubelet/cm/cgroup_manager_linux.go and qos_container_manager_linux.go). The pod's
processes live in per-container child cgroups; any of them (the pause process first, in
practice) is in the pod's network namespace. A pod whose cgroup has no process yet has
no namespace to hand over: the caller retries."""
from __future__ import annotations

import os
from pathlib import Path

QOS = ("burstable", "besteffort")
PROC = Path("/proc")


def layouts(uid: str) -> list[str]:
    """Every path, relative to the kubelet's cgroup root, where the pod's cgroup may be."""
    u = uid.replace("-", "_")
    systemd = [f"kubepods.slice/kubepods-pod{u}.slice"] + \
              [f"kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice" for q in QOS]
    cgroupfs = [f"kubepods/pod{uid}"] + [f"kubepods/{q}/pod{uid}" for q in QOS]
    return systemd + cgroupfs


def pod_cgroup(root: Path, uid: str) -> Path | None:
    """The pod's cgroup directory under `root` (the cgroup2 mount, or where the kubelet
    nests kubepods), or None while the kubelet has not made it."""
    for rel in layouts(uid):
        path = root / rel
        if path.is_dir():
            return path
    return None


def processes(cgroup: Path) -> list[int]:
    """Pids in `cgroup` and below, the pod cgroup's own first (where a pause-less runtime
    may put them), then each container's; empty while nothing runs."""
    pids: list[int] = []
    for directory, subdirs, _ in os.walk(cgroup):
        subdirs.sort()
        try:
            text = Path(directory, "cgroup.procs").read_text()
        except OSError:  # removed while we walked: the pod or a container is going away
            continue
        pids += [int(p) for p in text.split()]
    return pids


def pod_netns(cgroup: Path, proc: Path = PROC) -> str | None:
    """A /proc/<pid>/ns/net path of a live process of the pod, or None."""
    for pid in processes(cgroup):
        path = proc / str(pid) / "ns" / "net"
        try:
            os.stat(path)
        except OSError:  # exited meanwhile: try the next one
            continue
        return str(path)
    return None
