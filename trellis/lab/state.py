"""Where the lab keeps its state (`lab.json`) and how it is named, so that `lab down`
can undo exactly what `lab up` did, even when `up` stopped half way."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

DEFAULT_STATE_DIR = "/run/trellis/lab"
DEFAULT_PREFIX = "trellis"


def state_dir() -> Path:
    return Path(os.environ.get("TRELLIS_LAB_DIR") or DEFAULT_STATE_DIR)


def prefix() -> str:
    return os.environ.get("TRELLIS_LAB_PREFIX") or DEFAULT_PREFIX


@dataclass
class Proc:
    name: str            # "controlplane", "ztunnel/node1", "pod/default/sleep"
    pid: int
    log: str
    netns: str
    cgroup: str | None   # absolute cgroup directory, None when left where the CLI runs
    start_time: int = 0  # /proc/PID/stat field 22: tells our pid from a recycled one
    # what the supervisor needs to start it again (trellis/lab/supervisor.py)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    last_exit: str | None = None   # "signal 9 (SIGKILL)", "code 1", "exited" (status unknown)
    held: bool = False             # `trellis lab stop`: left down until `trellis lab start`


@dataclass
class LabState:
    """Everything created, recorded *before* creating it (write-ahead), so a crash
    between recording and creating only makes `down` try to delete something absent."""
    lab_dir: str
    prefix: str
    trust_domain: str = "cluster.local"
    cgroup_mount: str | None = None
    cgroup_root: str | None = None       # absolute path of <mount>/<prefix>-lab
    netns: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    mesh: bool = True
    kubernetes: bool = False             # `lab up --kubernetes`: waypoint pods follow the API (kubelet.py)
    phase: str = "creating"              # creating -> up
    supervisor: Proc | None = None       # restarts components that exit (started once up)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabState":
        d = dict(d)
        d["procs"] = [Proc(**p) for p in d.get("procs", [])]
        if d.get("supervisor"):
            d["supervisor"] = Proc(**d["supervisor"])
        return cls(**d)


def config_dir_of(st: LabState, sdir: Path | None = None) -> Path:
    """The live config dir the lab's control plane watches. A `lab up --kubernetes` lab has
    none (its control plane reads the API server): ValueError saying how to change it."""
    if st.kubernetes:
        raise ValueError(f"this lab runs in Kubernetes mode (`lab up --kubernetes`): its control plane reads its "
                         f"API server, not the config directory that `trellis lab apply`, `trellis waypoint` and "
                         f"`trellis get` use; change objects through the API as with kubectl (README, \"A "
                         f"cluster-shaped lab\"), e.g. `ip netns exec {st.prefix}-fabric curl --cacert "
                         f"{sdir or state_dir()}/kube/pki/ca.crt -H \"Authorization: Bearer $(jq -r .admin "
                         f"{sdir or state_dir()}/kube/tokens.json)\" https://10.100.0.1:6443/apis/"
                         f"gateway.networking.k8s.io/v1/gateways`")
    return (sdir or state_dir()) / "config"


def state_file(sdir: Path | None = None) -> Path:
    return (sdir or state_dir()) / "lab.json"


def load(sdir: Path | None = None) -> LabState | None:
    path = state_file(sdir)
    try:
        return LabState.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise RuntimeError(f"{path}: unreadable lab state ({exc}); remove it after cleaning up by hand") from None


def save(st: LabState, sdir: Path | None = None) -> None:
    path = state_file(sdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(st.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(sdir: Path | None = None) -> Iterator[None]:
    """Serialise read-modify-write of lab.json between the supervisor and the CLI (reads
    need no lock: `save` replaces the file atomically)."""
    path = (sdir or state_dir()) / "lab.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses; fields restart after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(p: Proc) -> bool:
    st = proc_start_time(p.pid)
    if st is None or (p.start_time and st != p.start_time):
        return False
    try:
        return Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
