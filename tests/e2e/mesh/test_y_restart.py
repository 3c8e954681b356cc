"""ztunnel restarts without refusing connections (issue 13): the node agent holds every
pod's listening sockets, so while no ztunnel runs the kernel queues new connections and
the next ztunnel accepts them; SIGTERM drains open connections while a successor serves.

The restart is done here (the old process's own command line, netns and cgroup), not by
the lab's supervision, so the test stands on the handoff alone."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from e2e.labctl import TRELLIS, wait_until
from trellis.lab import procs, state

# One request per line on stdin, each on a new connection through the mesh (capture on
# node1, HBONE to web on node2); one result line each.
DRIVEN = r"""
import socket, sys, time
for line in sys.stdin:
    t0 = time.monotonic()
    try:
        s = socket.create_connection(('10.96.0.10', 80), timeout=20)
        s.settimeout(20)
        s.sendall(b'GET / HTTP/1.0\r\nHost: web\r\n\r\n')
        data = b''
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        status = data.split(b'\r\n', 1)[0]
        print('ok' if b' 200 ' in status else 'bad ' + repr(status), round((time.monotonic() - t0) * 1000), flush=True)
    except OSError as e:
        print('fail', type(e).__name__, e, flush=True)
"""

# A connection open across the restart: pings the TCP echo every 0.1 s for `secs`.
LONG = """
import socket, sys, time
s = socket.create_connection(('10.96.0.20', 9000), timeout=10)
ok, deadline = 0, time.monotonic() + {secs}
print('open', flush=True)
while time.monotonic() < deadline:
    s.sendall(b'ping'); got = b''
    while len(got) < 4:
        b = s.recv(4 - len(got))
        if not b: print('CLOSED after', ok, flush=True); sys.exit(1)
        got += b
    ok += 1; time.sleep(0.1)
print('OK', ok, flush=True)
"""


class Requests:
    """A steady request loop driven from here, so the test knows when each one started."""

    def __init__(self, lab, pod: str = "sleep"):
        self.p = subprocess.Popen([TRELLIS, "lab", "exec", pod, "--", "python3", "-c", DRIVEN], env=lab.env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.results: list[tuple[float, str]] = []  # (start time, result line)

    def one(self) -> str:
        t0 = time.monotonic()
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline().strip()
        self.results.append((t0, line))
        return line

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=30)

    def failures(self) -> list[str]:
        return [line for _, line in self.results if not line.startswith("ok")]

    def report(self, lab) -> str:
        lines = [f"{t:.3f} {line}" for t, line in self.results]
        def notable(path):  # what went wrong, not every served connection
            text = procs.tail(path, 2000).splitlines()
            return "\n".join(line for line in text if '"outcome": "ok"' not in line and " issued, " not in line)[-6000:]
        logs = [f"--- {p['name']}\n{notable(p['log'])}" for p in lab.state()["procs"]
                if p["name"].startswith(("ztunnel/", "nodeagent/"))]
        return "\n".join(lines + logs)


def ztunnel_proc(lab, node: str) -> dict:
    return lab.proc(f"ztunnel/{node}")


def _update_proc(lab, name: str, **changes) -> None:
    """Change one process's record in lab.json, under the lab's lock where it has one (a
    lab supervisor reads the same file: `held` keeps it from restarting the process too)."""
    lock = getattr(state, "locked", None)
    with lock(lab.state_dir) if lock else contextlib.nullcontext():
        st = state.load(lab.state_dir)
        p = next(p for p in st.procs if p.name == name)
        for key, value in changes.items():
            setattr(p, key, value)
        state.save(st, lab.state_dir)


def signal_ztunnel(lab, node: str, sig: signal.Signals) -> int:
    pid = ztunnel_proc(lab, node)["pid"]
    _update_proc(lab, f"ztunnel/{node}", held=True)  # ours to restart, not a supervisor's
    os.kill(pid, sig)
    return pid


def restart_ztunnel(lab, node: str, cmdline: list[str]) -> None:
    """Start a ztunnel as the lab did (same argv, netns, cgroup, log) and record it."""
    old = ztunnel_proc(lab, node)
    new = procs.spawn(old["name"], cmdline, netns=old["netns"], cgroup=old["cgroup"], log=Path(old["log"]),
                      env={"TRELLIS_LAB_DIR": str(lab.state_dir)})
    _update_proc(lab, old["name"], pid=new.pid, start_time=new.start_time, held=False)


def cmdline_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def wait_serving(lab, node: str, pods: set[str]) -> None:
    wait_until(lambda: pods <= lab.serving(node), f"ztunnel/{node} to serve {pods}", timeout=30)


def test_sigkill_and_restart_refuses_nothing(lab):
    node_pods = {"node1": {"default/sleep", "default/client2"}, "node2": {"default/web-1", "default/web-2"}}
    old = {n: ztunnel_proc(lab, n)["pid"] for n in node_pods}
    argv = {n: cmdline_of(pid) for n, pid in old.items()}
    loop = Requests(lab)
    try:
        for _ in range(20):
            assert loop.one().startswith("ok")
        for n in old:  # both ends: the client's capture and the server's HBONE port
            signal_ztunnel(lab, n, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: all(not Path(f"/proc/{pid}").exists() or
                               "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                               for pid in old.values()), "the ztunnels to die", timeout=10)
        restarted_at: list[float] = []

        def restart():
            for n in node_pods:
                restart_ztunnel(lab, n, argv[n])
            restarted_at.append(time.monotonic())

        timer = threading.Timer(1.5, restart)  # no ztunnel at all for 1.5 s
        timer.start()
        for _ in range(30):
            loop.one()
        timer.join()
        for n, pods in node_pods.items():
            wait_serving(lab, n, pods)
    finally:
        loop.close()
    assert loop.failures() == [], loop.report(lab)
    # requests really were made while no ztunnel ran, and were served after the restart
    gap = [line for t, line in loop.results if killed_at <= t < restarted_at[0]]
    assert gap and all(line.startswith("ok") for line in gap), loop.report(lab)
    assert len(loop.results) == 50


def test_sigterm_drains_open_connections_while_a_successor_serves(lab):
    node = "node1"
    wait_serving(lab, node, {"default/sleep", "default/client2"})
    pid = ztunnel_proc(lab, node)["pid"]
    argv = cmdline_of(pid)
    long = subprocess.Popen([TRELLIS, "lab", "exec", "sleep", "--", "python3", "-c", LONG.format(secs=6)],
                            env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert long.stdout.readline().strip() == "open"
    loop = Requests(lab)
    try:
        for _ in range(10):
            assert loop.one().startswith("ok")
        signal_ztunnel(lab, node, signal.SIGTERM)
        termed_at = time.monotonic()
        restart_ztunnel(lab, node, argv)  # the successor starts while the old one drains
        for _ in range(40):
            loop.one()
            time.sleep(0.05)
        wait_serving(lab, node, {"default/sleep", "default/client2"})
    finally:
        loop.close()
    out, err = long.communicate(timeout=40)
    # the connection open across the SIGTERM kept working until its own end (no CLOSED)
    assert long.returncode == 0 and out.strip().splitlines()[-1].startswith("OK "), (out, err)
    # the old process finished the open connection, then exited well before its 30 s deadline
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or
               Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
               "the draining ztunnel to exit", timeout=30)
    assert time.monotonic() - termed_at < 30  # --drain-timeout's default: it did not need the deadline
    assert loop.failures() == [], loop.report(lab)
    assert len(loop.results) == 50
