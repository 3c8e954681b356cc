"""The README's demo lab comes up healthy and `lab down` leaves the machine as it found it."""
import json
import os
import subprocess
from pathlib import Path

from e2e.labctl import Lab

ROOT = Path(__file__).resolve().parents[2]


def _cgroup2_mount() -> Path:
    for line in open("/proc/mounts"):
        dev, mnt, fstype, *_ = line.split()
        if fstype == "cgroup2":
            return Path(mnt)
    raise AssertionError("no cgroup2 mount")


def machine_snapshot() -> dict:
    cg = _cgroup2_mount()
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout or "[]")
    return {
        "netns": sorted(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")),
        "links": sorted(l.split(":")[1].strip() for l in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()),
        "cgroups": sorted(str(p.relative_to(cg)) for p in cg.rglob("*") if p.is_dir()),
        "cgroup_bpf_progs": sorted(p["id"] for p in progs if p.get("type", "").startswith(("cgroup", "sock_ops"))),
        "procs": sorted(p for p in os.listdir("/proc") if p.isdigit() and "ttlife" in _cmdline(p)),
    }


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        return ""


def test_demo_lab_up_then_down_leaves_nothing_behind():
    lab = Lab(ROOT / "examples" / "lab", "/run/trellis/e2e-life", "ttlife")
    lab.down()
    before = machine_snapshot()
    up = lab.cli("lab", "up", str(lab.lab_dir), check=False, timeout=240)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "trellis lab exec" in up.stdout, "lab up should end by saying what to try next"
        during = machine_snapshot()
        assert len(during["netns"]) > len(before["netns"])
        assert len(during["cgroup_bpf_progs"]) > len(before["cgroup_bpf_progs"]), "no eBPF program was loaded"
        res = lab.curl("sleep", "http://10.96.0.10/")
        assert res.returncode == 0, res.stderr
        status = json.loads(lab.cli("lab", "status", "-o", "json").stdout)
        assert status["pods"] and all(p["enrolled"] == p["mesh"] for p in status["pods"]), status
    finally:
        down = lab.down()
    assert down.returncode == 0, down.stderr
    assert machine_snapshot() == before
    # and again: down on nothing is fine
    assert lab.down().returncode == 0
