"""Lab cgroups (v2): found from /proc/mounts, never assumed at /sys/fs/cgroup, because
hosts mount the unified hierarchy in different places (hybrid setups: .../unified)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path


class CgroupError(RuntimeError):
    pass


def find_cgroup2(mounts: str | None = None) -> Path:
    text = mounts if mounts is not None else Path("/proc/mounts").read_text()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    raise CgroupError("no cgroup2 (unified) hierarchy in /proc/mounts; the lab needs cgroup v2 for eBPF "
                      "capture: mount it with `mount -t cgroup2 none /sys/fs/cgroup/unified`")


def create(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgroupError(f"cannot create cgroup {path}: {exc.strerror} (the lab must run as root)") from None


def join(path: Path, pid: int) -> None:
    (path / "cgroup.procs").write_text(f"{pid}\n")


def pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def subtree(root: Path) -> list[Path]:
    """Every cgroup under root (root included), deepest first: the order rmdir needs."""
    if not root.is_dir():
        return []
    found = [Path(d) for d, _, _ in os.walk(root)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def kill_all(root: Path, timeout: float = 5.0) -> int:
    """SIGKILL every process left anywhere under root; returns how many were signalled."""
    killed = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for cg in subtree(root) for pid in pids(cg)]
        if not left:
            return killed
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    raise CgroupError(f"processes {left} in {root} survived SIGKILL; see `ps -o pid,stat,cmd -p ...`")


def attached_bpf(path: Path) -> list[dict]:
    """Programs attached directly to this cgroup (bpftool's view)."""
    res = subprocess.run(["bpftool", "-j", "cgroup", "show", str(path)], capture_output=True, text=True, timeout=10)
    if res.returncode != 0 or not res.stdout.strip():
        return []
    try:
        return json.loads(res.stdout)
    except ValueError:
        return []


def detach_bpf(path: Path) -> list[str]:
    """Detach what a crashed node agent left behind, so no program outlives the lab."""
    done = []
    for prog in attached_bpf(path):
        res = subprocess.run(["bpftool", "cgroup", "detach", str(path), prog["attach_type"], "id", str(prog["id"])],
                             capture_output=True, text=True, timeout=10)
        if res.returncode == 0:
            done.append(f"{prog['attach_type']} id {prog['id']}")
    return done


def remove_tree(root: Path) -> list[str]:
    """rmdir every cgroup under root, deepest first; returns problems (empty when clean)."""
    problems = []
    for cg in subtree(root):
        detach_bpf(cg)
        for attempt in range(50):
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if attempt == 49:
                    problems.append(f"cannot remove cgroup {cg}: {exc.strerror}")
                time.sleep(0.05)
    return problems
