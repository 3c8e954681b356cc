"""`trellis lab down`: undo whatever lab.json says was created, in the safe order: node
agents first (they detach their eBPF programs), then the other processes, stragglers in
the lab cgroups and netns, the netns (their veths go with them), the cgroups deepest
first, the state dir. Works on a half-created lab and is a no-op without one."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Callable

from . import cgroups, net, procs, state

Echo = Callable[[str], None]


def pids_in_netns(name: str) -> list[int]:
    """Processes whose netns is the named one (e.g. a shell from `ip netns exec`), which
    would keep the namespace alive after `ip netns del`."""
    try:
        target = os.stat(net.NETNS_DIR / name)
    except FileNotFoundError:
        return []
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            s = os.stat(d / "ns" / "net")
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(d.name))
    return found


def down(echo: Echo = print, sdir: Path | None = None) -> list[str]:
    """Returns problems left (empty: everything is gone)."""
    sdir = sdir or state.state_dir()
    st = state.load(sdir)
    if st is None:
        echo(f"no lab running (no {state.state_file(sdir)})")
        return []
    problems: list[str] = []
    if st.supervisor is not None:
        # first, or it would restart what we stop; then re-read: it may have restarted something
        echo("stopping the supervisor")
        procs.stop([st.supervisor])
        with state.locked(sdir):
            st = state.load(sdir) or st
    agents = [p for p in st.procs if p.name.startswith("nodeagent/")]
    others = [p for p in st.procs if p not in agents]
    for group in (agents, others):
        if group:
            echo(f"stopping {', '.join(p.name for p in group)}")
            killed = procs.stop(group)
            if killed:
                echo(f"  needed SIGKILL: {', '.join(killed)}")
    if st.cgroup_root and Path(st.cgroup_root).exists():
        try:
            n = cgroups.kill_all(Path(st.cgroup_root))
            if n:
                echo(f"killed {n} leftover process(es) in {st.cgroup_root}")
        except cgroups.CgroupError as exc:
            problems.append(str(exc))
    for name in reversed(st.netns):
        for pid in pids_in_netns(name):
            try:
                os.kill(pid, signal.SIGKILL)
                echo(f"killed pid {pid} left in netns {name}")
            except ProcessLookupError:
                pass
        try:
            net.del_netns(name)
        except net.NetError as exc:
            problems.append(str(exc))
    echo(f"deleted {len(st.netns)} network namespace(s)")
    if st.cgroup_root:
        problems += cgroups.remove_tree(Path(st.cgroup_root))
        echo(f"removed cgroups under {st.cgroup_root}")
    if problems:
        echo(f"kept {sdir} so that `trellis lab down` can retry")
    else:
        _rm(sdir)
        echo(f"removed {sdir}")
    return problems


def _rm(path: Path) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return True
