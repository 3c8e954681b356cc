"""A real pod for eBPF tests: netns + veth to a peer netns + its own cgroup v2 + processes.

Everything is named tt-na-<id> and removed in teardown, even when a test fails.
Layout: pod netns (lo, eth 10.250.<n>.2/24 + fd00:250:<n>::2/64, default via .1) <-veth-> peer netns
(10.250.<n>.1/24); cgroups <cgroup2>/tt-na-<id>/{pod,other}.
"""
from __future__ import annotations

import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodeagent import cgroups

_seq = itertools.count(1)


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@dataclass
class Pod:
    id: str
    netns: str
    peer_netns: str
    pod_ip: str
    peer_ip: str
    pod_ip6: str
    peer_ip6: str
    root_cgroup: Path
    cgroup: Path           # the pod's cgroup
    other_cgroup: Path     # same netns, not the pod
    procs: list = field(default_factory=list)

    def spawn(self, code: str, cgroup: Path | None = None, netns: str | None = None) -> subprocess.Popen:
        """Run python code inside a netns with its pid in a cgroup before exec."""
        target = str(cgroup or self.cgroup)

        def enter_cgroup():
            Path(target, "cgroup.procs").write_text(str(os.getpid()))

        p = subprocess.Popen(["ip", "netns", "exec", netns or self.netns, sys.executable, "-c", code],
                             preexec_fn=enter_cgroup, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def run(self, code: str, cgroup: Path | None = None, timeout: float = 20) -> str:
        p = self.spawn(code, cgroup)
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"pod process failed: {err}"
        return out.strip()


@pytest.fixture
def pod():
    uid = f"{os.getpid() % 10000:04x}{next(_seq):x}{secrets.token_hex(1)}"
    n = 1 + int(secrets.token_hex(1), 16) % 250
    name = f"tt-na-{uid}"
    mount = cgroups.cgroup2_mount()
    root = mount / name
    p = Pod(id=uid, netns=name, peer_netns=f"{name}-peer", pod_ip=f"10.250.{n}.2",
            peer_ip=f"10.250.{n}.1", pod_ip6=f"fd00:250:{n:x}::2", peer_ip6=f"fd00:250:{n:x}::1", root_cgroup=root, cgroup=root / "pod", other_cgroup=root / "other")
    made_ns: list[str] = []
    try:
        for ns in (p.netns, p.peer_netns):
            sh("ip", "netns", "add", ns)
            made_ns.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        va, vb = f"tna{uid}a"[:15], f"tna{uid}b"[:15]
        sh("ip", "link", "add", va, "netns", p.netns, "type", "veth", "peer", "name", vb, "netns", p.peer_netns)
        sh("ip", "-n", p.netns, "addr", "add", f"{p.pod_ip}/24", "dev", va)
        sh("ip", "-n", p.peer_netns, "addr", "add", f"{p.peer_ip}/24", "dev", vb)
        sh("ip", "-n", p.netns, "addr", "add", f"{p.pod_ip6}/64", "dev", va, "nodad")
        sh("ip", "-n", p.peer_netns, "addr", "add", f"{p.peer_ip6}/64", "dev", vb, "nodad")
        sh("ip", "-n", p.netns, "link", "set", va, "up")
        sh("ip", "-n", p.peer_netns, "link", "set", vb, "up")
        sh("ip", "-n", p.netns, "route", "add", "default", "via", p.peer_ip)
        for cg in (root, p.cgroup, p.other_cgroup):
            cg.mkdir()
        yield p
    finally:
        for proc in p.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            try:
                proc.communicate(timeout=10)
            except Exception:
                pass
        for cg in (p.cgroup, p.other_cgroup, root):
            for _ in range(50):  # a killed process leaves its cgroup asynchronously
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        for ns in made_ns:  # deleting the netns destroys the veth pair with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def programs(tmp_path_factory):
    """One compiled set for the session; bcc's merged header tree lives in a temp dir
    (not /run/trellis) so the suite leaves nothing behind."""
    from nodeagent import headers
    from nodeagent.loader import Programs

    before = os.environ.get("BCC_KERNEL_SOURCE")
    if before is None:
        os.environ["BCC_KERNEL_SOURCE"] = str(headers.prepare(headers.find_headers(),
                                                              tmp_path_factory.mktemp("tt-na-headers")))
    progs = Programs()
    try:
        yield progs
    finally:
        progs.close()
        if before is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
