"""`trellis lab stop/start COMPONENT`: take one lab process down and keep it down (the
supervisor leaves a held component alone), then bring it back. The lab's equivalent of
scaling a Deployment to zero and back, for trying outages on purpose."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from . import procs, state
from .state import Proc


class ControlError(RuntimeError):
    pass


def _load(sdir: Path, name: str) -> tuple[state.LabState, Proc]:
    """lab.json and the component `name` in it (call with the lock held)."""
    st = state.load(sdir)
    if st is None:
        raise ControlError(f"no lab running (no {state.state_file(sdir)})")
    for p in st.procs:
        if p.name == name:
            return st, p
    raise ControlError(f"no lab component {name!r}; components: {', '.join(p.name for p in st.procs)}")


def stop(name: str, sig: signal.Signals = signal.SIGTERM, sdir: Path | None = None) -> Proc:
    """Hold `name` (recorded before the signal, so the supervisor never races us), then signal it."""
    sdir = sdir or state.state_dir()
    with state.locked(sdir):
        st, p = _load(sdir, name)
        p.held = True
        state.save(st, sdir)
    if state.alive(p):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            os.kill(p.pid, sig)
    return p


def start(name: str, sdir: Path | None = None) -> Proc:
    """Release `name`; start it now if it is not running (not counted as a restart)."""
    sdir = sdir or state.state_dir()
    with state.locked(sdir):
        st, p = _load(sdir, name)
        if not state.alive(p):
            if not p.argv:
                raise ControlError(f"{name} was started by an older `lab up` that did not record its command")
            new = procs.spawn(p.name, p.argv, netns=p.netns or None, cgroup=p.cgroup, log=Path(p.log), env=p.env)
            p.pid, p.start_time = new.pid, new.start_time
        p.held = False
        state.save(st, sdir)
    return p
