"""`python -m trellis.lab.supervisor --state-dir DIR`: restart lab components that exit.

What the kubelet does for a pod's containers (restartPolicy Always), for every process
of a lab (control plane, node agents, ztunnels, the pods' apps): an exit is noticed at
once (a pidfd per process, which works for processes that are not our children), the
first restart is immediate and later ones back off, doubling, up to a cap, and a process
that stayed up long enough starts over with no backoff. Scaled down from the kubelet's
10 s .. 5 min so that a lab heals in seconds. Each restart is recorded in lab.json
(pid, restarts, last exit), which `trellis lab status` shows. `lab up` starts one
supervisor per lab once the lab is ready; `lab down` stops it first, so that nothing is
restarted while the lab is taken apart. A component held with `trellis lab stop` is
left down until `trellis lab start`.

It also runs the lab's waypoint controller (trellis/lab/waypointpods.py): once a second it
starts and stops waypoint pods as Gateways of class `trellis-waypoint` come and go in the
live config; in a lab up with --kubernetes, as the control plane's waypoint Deployments
come and go in the API server (trellis/lab/kubelet.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import procs, state
from .state import Proc

log = logging.getLogger("trellis.lab.supervisor")

BACKOFF_FIRST = 1.0    # the second restart in a row waits this long, then doubling
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0    # up this long: the next exit restarts at once again
RECONCILE_EVERY = 1.0  # waypoint pods follow the live config within about a second


@dataclass
class Backoff:
    """Pure: when to restart a component that exited (time in seconds, any clock)."""
    streak: int = 0

    def on_exit(self, started: float, now: float) -> float:
        """Delay before the restart of a process that ran from `started` until `now`."""
        if now - started >= STABLE_AFTER:
            self.streak = 0
        delay = 0.0 if self.streak == 0 else min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.streak - 1))
        self.streak += 1
        return delay


@dataclass
class Watch:
    pid: int
    fd: int | None          # pidfd; None once the process is gone
    started: float          # monotonic time we first saw it running
    backoff: Backoff = field(default_factory=Backoff)
    due: float | None = None  # restart at (monotonic), when it exited
    last_exit: str | None = None


def describe_exit(p: Proc) -> str:
    code = procs.exited_code(p)   # only our own children tell us how they ended
    if code is None:
        return "exited"
    if code < 0:
        return f"signal {-code} ({signal.Signals(-code).name})"
    return f"code {code}"


class Supervisor:
    def __init__(self, sdir: Path, waypoints: bool = True) -> None:
        self.sdir = sdir
        self.watches: dict[str, Watch] = {}
        self.stopping = False
        self.controller = None
        if waypoints:
            st = state.load(sdir)
            if st is not None and st.kubernetes:   # waypoint Deployments in the API server
                from .kubelet import KubeletController
                self.controller = KubeletController(sdir)
            else:                                  # Gateways in the live config
                from .waypointpods import WaypointController
                self.controller = WaypointController(sdir)
        self.next_reconcile = 0.0

    def _open(self, p: Proc) -> int | None:
        try:
            fd = os.pidfd_open(p.pid)
        except (ProcessLookupError, OSError):
            return None
        if not state.alive(p):   # a recycled pid, or a zombie: it is gone already
            os.close(fd)
            return None
        return fd

    def sync(self, st: state.LabState) -> None:
        """Watch what lab.json lists; forget what it no longer does or holds."""
        now = time.monotonic()
        live = {p.name: p for p in st.procs if not p.held}
        for name in list(self.watches):
            w = self.watches[name]
            if name not in live or (w.due is None and live[name].pid != w.pid):
                self._close(name)
        for name, p in live.items():
            if name not in self.watches:
                fd = self._open(p)
                w = self.watches[name] = Watch(pid=p.pid, fd=fd, started=now)
                if fd is None:
                    self._exited(name, p, now)

    def _close(self, name: str) -> None:
        w = self.watches.pop(name)
        if w.fd is not None:
            os.close(w.fd)

    def _exited(self, name: str, p: Proc, now: float) -> None:
        w = self.watches[name]
        if w.fd is not None:
            os.close(w.fd)
            w.fd = None
        w.last_exit = describe_exit(p)
        delay = w.backoff.on_exit(w.started, now)
        w.due = now + delay
        log.warning("%s (pid %d) %s; restarting in %.0fs", name, p.pid, w.last_exit, delay)

    def _restart(self, name: str) -> None:
        with state.locked(self.sdir):
            st = state.load(self.sdir)
            p = next((q for q in st.procs if q.name == name), None) if st else None
            if p is None or p.held or self.stopping:
                self._close(name)
                return
            if not p.argv:
                log.error("cannot restart %s: lab.json has no command for it (a lab from an older `lab up`)", name)
                self._close(name)
                return
            try:
                new = procs.spawn(p.name, p.argv, netns=p.netns or None, cgroup=p.cgroup, log=Path(p.log),
                                  env=p.env)
            except (OSError, RuntimeError) as exc:   # e.g. its netns is gone
                log.error("restarting %s failed: %s", name, exc)
                w = self.watches[name]
                w.due = time.monotonic() + w.backoff.on_exit(w.started, time.monotonic())
                return
            p.pid, p.start_time, p.restarts = new.pid, new.start_time, p.restarts + 1
            p.last_exit = self.watches[name].last_exit
            state.save(st, self.sdir)
        w = self.watches[name]
        w.pid, w.fd, w.started, w.due = new.pid, self._open(p), time.monotonic(), None
        log.info("%s restarted as pid %d (restart %d)", name, new.pid, p.restarts)
        if w.fd is None:   # gone again before we could watch it
            self._exited(name, p, w.started)

    def reconcile(self) -> None:
        """Waypoint pods, at most once a second; a failure is logged and retried."""
        if self.controller is None or self.stopping or time.monotonic() < self.next_reconcile:
            return
        self.next_reconcile = time.monotonic() + RECONCILE_EVERY
        try:
            self.controller.reconcile()
        except Exception:
            log.exception("waypoint reconcile failed; retrying")

    def step(self, wake_fd: int) -> None:
        self.reconcile()   # before load: it may add or remove processes
        st = state.load(self.sdir)
        if st is None:   # the lab is gone
            self.stopping = True
            return
        self.sync(st)
        now = time.monotonic()
        dues = [w.due for w in self.watches.values() if w.due is not None]
        timeout = max(0.0, min(dues) - now) if dues else 1.0
        by_fd = {w.fd: name for name, w in self.watches.items() if w.fd is not None}
        ready, _, _ = select.select([wake_fd, *by_fd], [], [], min(timeout, 1.0))
        now = time.monotonic()
        procs_by_name = {p.name: p for p in st.procs}
        for fd in ready:
            if fd in by_fd:
                self._exited(by_fd[fd], procs_by_name[by_fd[fd]], now)
            else:
                os.read(fd, 512)   # a signal woke us: drain the wakeup pipe
        for name, w in list(self.watches.items()):
            if w.due is not None and w.due <= now and not self.stopping:
                self._restart(name)

    def run(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)

        def stop(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("supervising the lab in %s", self.sdir)
        while not self.stopping:
            try:
                self.step(rfd)
            except Exception:   # an unreadable lab.json, a failed spawn: keep supervising
                log.exception("supervisor step failed; retrying in 1s")
                time.sleep(1.0)
        log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m trellis.lab.supervisor", description=__doc__.splitlines()[0])
    ap.add_argument("--state-dir", type=Path, required=True, help="the lab's state dir (lab.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Supervisor(args.state_dir).run()


if __name__ == "__main__":
    main()
