"""`python -m ztunnel --workers 2` as processes, with a real control plane: the owner starts
its workers, reports them, and never leaves one behind (SIGTERM, SIGKILL)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

from meshcore.admin import get_json, http_get
from ztunnel.fleet import BUSY_GRACE, worker_cpus

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def node(tmp_path):
    """A control plane (empty config) and `ztunnel --workers 2` for node n1."""
    cp_port = free_port()
    subprocess.run([PY, "-m", "controlplane", "--ca-dir", str(tmp_path / "ca"), "--trust-domain", "cluster.local",
                    "--issue-node-credential", "n1", "--out", str(tmp_path / "n1")], check=True,
                   capture_output=True, timeout=60)
    (tmp_path / "config").mkdir()
    cp = subprocess.Popen([PY, "-m", "controlplane", "--config-dir", str(tmp_path / "config"), "--ca-dir",
                           str(tmp_path / "ca"), "--listen", f"127.0.0.1:{cp_port}", "--admin",
                           f"127.0.0.1:{free_port()}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ports = {k: free_port() for k in ("admin", "metrics", "ready")}
    zt = subprocess.Popen([PY, "-m", "ztunnel", "--node", "n1", "--control-plane", f"127.0.0.1:{cp_port}",
                           "--credential-dir", str(tmp_path / "n1"), "--run-dir", str(tmp_path / "run"),
                           "--workers", "2", "--drain-timeout", "2",
                           *(f"--{k}=127.0.0.1:{p}" for k, p in ports.items())],
                          stdout=open(tmp_path / "ztunnel.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: http_get("127.0.0.1", ports["ready"], "/healthz/ready")[0] == 200, what="readiness")
        yield zt, ports
    finally:
        for p in (zt, cp):
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_owner_runs_two_workers_and_reports_them(tmp_path):
    with node(tmp_path) as (zt, ports):
        workers = children(zt.pid)
        assert len(workers) == 2
        health = get_json("127.0.0.1", ports["admin"], "/healthz")
        assert sorted(w["pid"] for w in health["workers"]) == sorted(workers)
        assert all(w["alive"] and w["restarts"] == 0 for w in health["workers"])
        # --worker-cpus pin (default): pinned when there is one worker per usable CPU
        want = worker_cpus(2)
        for w in health["workers"]:
            assert os.sched_getaffinity(w["pid"]) == ({want[w["worker"]]} if want else os.sched_getaffinity(0)), w
        status, body = http_get("127.0.0.1", ports["metrics"], "/metrics")
        assert status == 200 and b"trellis_ztunnel_workers_alive 2.0" in body
        zt.send_signal(signal.SIGTERM)
        assert zt.wait(20) == 0
        assert not [w for w in workers if alive(w)], "a worker outlived its owner's SIGTERM"


def test_a_killed_owner_leaves_no_worker_behind(tmp_path):
    with node(tmp_path) as (zt, _ports):
        workers = children(zt.pid)
        assert len(workers) == 2
        os.kill(zt.pid, signal.SIGKILL)
        zt.wait(10)
        # each worker sees its socketpair close and drains (nothing open here), then exits
        wait_for(lambda: not [w for w in workers if alive(w)], timeout=20, what="the orphaned workers to exit")


def test_a_hung_worker_is_killed_and_replaced(tmp_path):
    """A worker that is alive but does not serve (here SIGSTOP) misses the owner's heartbeat:
    the owner kills it within seconds and starts another; the other worker is not touched."""
    with node(tmp_path) as (zt, ports):
        wait_for(lambda: all(w["heartbeat"] == "ok" for w in get_json("127.0.0.1", ports["admin"], "/healthz")["workers"]),
                 what="both workers to answer the heartbeat")
        before = {w["worker"]: w for w in get_json("127.0.0.1", ports["admin"], "/healthz")["workers"]}
        victim, other = before[0]["pid"], before[1]["pid"]
        os.kill(victim, signal.SIGSTOP)

        def replaced():
            w = get_json("127.0.0.1", ports["admin"], "/healthz")["workers"][0]
            return w["alive"] and w["pid"] != victim
        wait_for(replaced, timeout=30, what="the stopped worker to be replaced")
        after = {w["worker"]: w for w in get_json("127.0.0.1", ports["admin"], "/healthz")["workers"]}
        assert after[0]["restarts"] == 1 and "heartbeat" in after[0]["lastExit"], after[0]
        # killed by the timeout, not at the end of a grace (it had answered since it started)
        assert float(after[0]["lastExit"].split(" for ")[1].split("s")[0]) < BUSY_GRACE, after[0]
        assert after[1]["pid"] == other and after[1]["restarts"] == 0, after[1]
        assert not alive(victim), "the hung worker was left running"
        assert sorted(children(zt.pid)) == sorted([after[0]["pid"], other])
        assert http_get("127.0.0.1", ports["ready"], "/healthz/ready")[0] == 200
