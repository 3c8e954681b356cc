"""Starting lab processes inside a netns and a cgroup, and stopping them.

The child joins the netns and the cgroup in a preexec hook, before exec, so that not even
the first instruction of the component runs outside its place (the node agent finds pods
by their processes, and the eBPF capture keys on the cgroup)."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .state import Proc, alive, proc_start_time

CLONE_NEWNET = 0x40000000
# our own children, kept so their exit status is still ours to read (Popen reaps on GC)
_children: dict[int, subprocess.Popen] = {}
_libc = ctypes.CDLL(None, use_errno=True)


def _enter(netns: str | None, cgroup: str | None) -> None:
    # runs in the forked child: keep it to syscalls, no locks, no logging
    if netns:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
        os.close(fd)
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def resolve(argv: list[str]) -> list[str]:
    """Lab commands name the venv's scripts (`trellis-echo`) and `python` as if the venv
    were activated, whatever PATH the caller of `trellis` has."""
    bindir = Path(sys.executable).parent
    head = argv[0]
    if head in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if "/" not in head and (bindir / head).exists():
        return [str(bindir / head), *argv[1:]]
    if "/" not in head and shutil.which(head) is None:
        raise FileNotFoundError(f"command {head!r} not found in {bindir} or PATH; "
                                f"is it installed (scripts/setup)?")
    return list(argv)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def spawn(name: str, argv: list[str], *, netns: str | None, cgroup: str | None, log: Path,
          env: dict[str, str] | None = None, cwd: str | None = None) -> Proc:
    """Start detached (own session, so the CLI exiting or ^C does not touch it); netns
    None stays in the caller's."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        child = subprocess.Popen(resolve(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=lambda: _enter(netns, cgroup),
                                 env=child_env(env), cwd=cwd, close_fds=True)
    _children[child.pid] = child
    return Proc(name=name, pid=child.pid, log=str(log), netns=netns or "", cgroup=cgroup,
                start_time=proc_start_time(child.pid) or 0, argv=list(argv), env=dict(env or {}))


def run_in(argv: list[str], *, netns: str, cgroup: str | None, env: dict[str, str] | None = None) -> int:
    """Run in the foreground with our stdio; returns the exit code (128+N on signal N, as a shell)."""
    res = subprocess.run(resolve(argv), preexec_fn=lambda: _enter(netns, cgroup), env=child_env(env))
    return res.returncode if res.returncode >= 0 else 128 - res.returncode


def exited_code(p: Proc) -> int | None:
    """Exit status if the process is our child and has exited, else None."""
    if p.pid in _children:
        return _children[p.pid].poll()
    try:
        pid, status = os.waitpid(p.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if pid else None


def _reap(pid: int) -> None:
    if pid in _children:
        _children[pid].poll()
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(procs: list[Proc], timeout: float = 10.0) -> list[str]:
    """SIGTERM the process groups, wait, SIGKILL what is left; returns what needed SIGKILL."""
    live = [p for p in procs if alive(p)]
    for p in live:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in live:
            _reap(p.pid)
        live = [p for p in live if alive(p)]
        if not live:
            return []
        time.sleep(0.05)
    for p in live:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(p.pid)
    return [f"{p.name} (pid {p.pid})" for p in live]


def tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
