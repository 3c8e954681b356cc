"""Find the cgroup v2 mount and a pod's cgroup, the way a CNI plugin derives it.

A pod is a network namespace; its cgroup is the deepest cgroup that holds every
process living in that namespace. A namespace with no process yet has no cgroup to
attach to; the caller retries at the next reconcile.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

PROC = Path("/proc")


class CgroupError(RuntimeError):
    pass


def parse_cgroup2_mount(mounts: str) -> Path:
    """First cgroup2 mount point in /proc/mounts text."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            # /proc/mounts escapes spaces in paths as \040.
            return Path(fields[1].replace("\\040", " "))
    raise CgroupError("no cgroup2 filesystem is mounted (see /proc/mounts); the node agent needs "
                      "cgroup v2: mount it with `mount -t cgroup2 none /sys/fs/cgroup` or boot with "
                      "systemd.unified_cgroup_hierarchy=1")


def cgroup2_mount(proc: Path = PROC) -> Path:
    return parse_cgroup2_mount((proc / "mounts").read_text())


def parse_proc_cgroup(text: str) -> str | None:
    """The v2 path ("0::/a/b") from /proc/PID/cgroup text, or None (v1-only process)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].split(" ", 1)[0] or "/"
    return None


def common_cgroup(paths: list[str]) -> str | None:
    """Deepest cgroup containing all `paths` (absolute, relative to the v2 root)."""
    if not paths:
        return None
    parts = [PurePosixPath(p).parts for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return str(PurePosixPath(*common)) if common else "/"


def _ns_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # process exited, or a kernel thread we may not inspect
        return None
    return st.st_dev, st.st_ino


def pids_in_netns(netns: Path, proc: Path = PROC) -> list[int]:
    target = _ns_id(netns)
    if target is None:
        raise CgroupError(f"network namespace {netns} does not exist")
    pids = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and _ns_id(entry / "ns" / "net") == target:
            pids.append(int(entry.name))
    return sorted(pids)


def own_cgroup(proc: Path = PROC) -> str | None:
    return parse_proc_cgroup((proc / "self" / "cgroup").read_text())


def pod_cgroup(netns: Path, proc: Path = PROC, mount: Path | None = None,
               ignore: tuple[str, ...] | None = None) -> Path | None:
    """The pod's cgroup directory, or None while no process lives in the namespace.

    Processes in `ignore` (default: our own cgroup, where the lab also runs ztunnel) do
    not count: ztunnel's thread visits a pod's netns for an instant to create sockets
    there, and would otherwise drag the common cgroup up to the node's.
    Refuses the cgroup root: attaching there would capture every process on the node.
    """
    mount = mount or cgroup2_mount(proc)
    if ignore is None:
        ignore = tuple(c for c in (own_cgroup(proc),) if c and c != "/")
    paths = []
    for pid in pids_in_netns(netns, proc):
        try:
            cg = parse_proc_cgroup((proc / str(pid) / "cgroup").read_text())
        except OSError:
            continue
        if cg is not None and cg not in ignore:
            paths.append(cg)
    common = common_cgroup(paths)
    if common is None:
        return None
    if common == "/":
        raise CgroupError(f"the processes in {netns} ({len(paths)}) share no cgroup below the root; "
                          f"put the pod's processes in their own cgroup (attaching to the root would "
                          f"capture the whole node)")
    return mount / common.lstrip("/")
