"""Compile bpf/ with bcc, attach the programs to pod cgroups, detach them again.

bcc neither records nor undoes cgroup attachments, so this module keeps every
attachment it makes and `detach_all()` (called on shutdown) removes each one. All
attachments use BPF_F_ALLOW_MULTI so that programs another CNI attached to the same
cgroup keep running. Nothing is pinned: when the agent exits the programs and maps go.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from meshcore import ports
from meshcore.wire import origdst as origdst_layout

from . import headers

log = logging.getLogger("trellis.nodeagent.loader")

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
SOURCES = ("connect.c", "sockops.c", "strict.c")
BPF_F_ALLOW_MULTI = 2
EXCLUDED_PORTS_MAX = 64  # handed to bpf/include/config.h as -DEXCLUDED_PORTS_MAX
NODE_ADDRS_MAX = 16      # handed to bpf/include/config.h as -DNODE_ADDRS_MAX


class LoaderError(RuntimeError):
    pass


@dataclass(frozen=True)
class ProgramSpec:
    name: str          # function in bpf/*.c
    prog_type: str     # bcc BPF.<prog_type>
    attach_type: str   # bcc BPFAttachType.<attach_type>


CAPTURE = (
    ProgramSpec("trellis_connect4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT"),
    ProgramSpec("trellis_connect6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_CONNECT"),
    ProgramSpec("trellis_sockops", "SOCK_OPS", "CGROUP_SOCK_OPS"),
)
STRICT = ProgramSpec("trellis_strict_ingress", "CGROUP_SKB", "CGROUP_INET_INGRESS")


@dataclass(frozen=True)
class Attachment:
    cgroup: Path
    program: str


def _open_cgroup(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LoaderError(f"cgroup {path} does not exist (did the pod go away?)") from None


class Programs:
    """The loaded programs and maps of one node agent."""

    def __init__(self, bpf_dir: Path = BPF_DIR, excluded_ports: tuple[int, ...] = (),
                 cflags: tuple[str, ...] = (), node_addresses: tuple[str, ...] = ()):
        headers.use_headers()
        from bcc import BPF, BPFAttachType  # after BCC_KERNEL_SOURCE is set

        self._BPF, self._AT = BPF, BPFAttachType
        try:
            text = "".join((bpf_dir / f).read_text() for f in SOURCES)
        except FileNotFoundError as e:
            raise LoaderError(f"eBPF source {e.filename} missing; is the bpf/ directory installed?") from None
        # One compilation unit so that all programs share the maps of include/maps.h.
        try:
            self.bpf = BPF(text=text.encode(), cflags=[f"-I{bpf_dir}", *compile_defines(), *cflags])
        except Exception as e:
            raise LoaderError(f"compiling {bpf_dir}/{{{','.join(SOURCES)}}} failed: {e}") from e
        self._fns = {}
        for spec in (*CAPTURE, STRICT):
            try:
                self._fns[spec.name] = self.bpf.load_func(
                    spec.name.encode(), getattr(BPF, spec.prog_type),
                    attach_type=getattr(BPFAttachType, spec.attach_type))
            except Exception as e:
                raise LoaderError(f"the kernel refused eBPF program {spec.name}: {e} "
                                  f"(needs root/CAP_BPF and a kernel >= 5.15)") from e
        self._specs = {s.name: s for s in (*CAPTURE, STRICT)}
        self._attached: list[Attachment] = []
        self.set_excluded_ports(excluded_ports)
        self.set_node_addresses(node_addresses)

    # maps -----------------------------------------------------------------
    @property
    def origdst(self):
        return self.bpf[origdst_layout.MAP_NAME]

    @property
    def origdst_fd(self) -> int:
        return self.origdst.map_fd

    def set_excluded_ports(self, ports) -> None:
        """Replace the set of destination ports that are never captured."""
        ports = sorted(set(ports))
        bad = [p for p in ports if not isinstance(p, int) or not 0 < p < 65536]
        if bad:
            raise LoaderError(f"excluded port {bad[0]!r} is not a TCP port (1-65535)")
        if len(ports) > EXCLUDED_PORTS_MAX:
            raise LoaderError(f"{len(ports)} excluded ports given, at most {EXCLUDED_PORTS_MAX} fit "
                              f"(raise EXCLUDED_PORTS_MAX in nodeagent/loader.py)")
        table = self.bpf[b"excluded_ports"]
        table.clear()
        for p in ports:
            table[table.Key(p)] = table.Leaf(1)

    def set_node_addresses(self, addresses) -> None:
        """Replace the node's own addresses: under STRICT, plaintext from these (the
        kubelet's probes) still reaches enrolled pods."""
        import ipaddress
        try:
            ips = sorted({ipaddress.ip_address(str(a)) for a in addresses}, key=str)
        except ValueError as e:
            raise LoaderError(f"node address: {e}") from None
        if len(ips) > NODE_ADDRS_MAX:
            raise LoaderError(f"{len(ips)} node addresses given, at most {NODE_ADDRS_MAX} fit "
                              f"(raise NODE_ADDRS_MAX in nodeagent/loader.py)")
        table = self.bpf[b"node_addrs"]
        table.clear()
        for ip in ips:
            key = table.Key()
            key.family = ip.version
            raw = ip.packed.ljust(16, b"\0")
            for i in range(4):  # the words as the kernel stores them: network order in memory
                key.addr[i] = int.from_bytes(raw[4 * i:4 * i + 4], "little")
            table[key] = table.Leaf(1)
        self.node_addresses = tuple(str(ip) for ip in ips)

    # attachments ----------------------------------------------------------
    def attachments(self, cgroup: Path | None = None) -> list[Attachment]:
        return [a for a in self._attached if cgroup is None or a.cgroup == cgroup]

    def _attach_one(self, fd: int, cgroup: Path, name: str) -> None:
        spec = self._specs[name]
        self._BPF.attach_func(self._fns[name], fd, getattr(self._AT, spec.attach_type), BPF_F_ALLOW_MULTI)
        self._attached.append(Attachment(cgroup, name))

    def _detach_one(self, fd: int, att: Attachment) -> None:
        spec = self._specs[att.program]
        try:
            self._BPF.detach_func(self._fns[att.program], fd, getattr(self._AT, spec.attach_type))
        except Exception as e:
            # ENOENT: the kernel already dropped it (cgroup being removed); still ours to forget.
            if os.strerror(errno.ENOENT) not in str(e):
                raise LoaderError(f"detaching {att.program} from {att.cgroup} failed: {e}") from e
        self._attached.remove(att)

    def attach(self, cgroup: Path, strict: bool = False) -> list[str]:
        """Attach capture (and STRICT) programs; all or nothing. Returns program names."""
        cgroup = Path(cgroup)
        wanted = [s.name for s in CAPTURE] + ([STRICT.name] if strict else [])
        have = {a.program for a in self.attachments(cgroup)}
        if not have:
            self.remove_stale(cgroup)
        fd = _open_cgroup(cgroup)
        done: list[str] = []
        try:
            for name in wanted:
                if name in have:
                    continue
                try:
                    self._attach_one(fd, cgroup, name)
                except Exception as e:
                    for n in reversed(done):
                        self._detach_one(fd, Attachment(cgroup, n))
                    raise LoaderError(f"attaching {name} to cgroup {cgroup} failed: {e}") from e
                done.append(name)
        finally:
            os.close(fd)
        return wanted

    def remove_stale(self, cgroup: Path) -> list[str]:
        """Detach trellis_* programs that an agent killed without cleanup left behind.

        Attachments outlive the process that made them; a stale connect4 running before
        ours would record destinations in a map ztunnel no longer reads.
        """
        ours = {_prog_id(fn.fd) for fn in self._fns.values()}
        removed = []
        for a in _bpftool_json("cgroup", "show", str(cgroup)):
            if a.get("name", "").startswith("trellis_") and a.get("id") not in ours:
                _bpftool_json("cgroup", "detach", str(cgroup), a["attach_type"], "id", str(a["id"]))
                removed.append(f"{a['name']}#{a['id']}")
        if removed:
            log.warning("cgroup %s: detached %s left by an earlier node agent", cgroup, ", ".join(removed))
        return removed

    def set_strict(self, cgroup: Path, on: bool) -> None:
        cgroup = Path(cgroup)
        has = Attachment(cgroup, STRICT.name) in self._attached
        if on == has:
            return
        fd = _open_cgroup(cgroup)
        try:
            if on:
                self._attach_one(fd, cgroup, STRICT.name)
            else:
                self._detach_one(fd, Attachment(cgroup, STRICT.name))
        finally:
            os.close(fd)

    def detach(self, cgroup: Path) -> list[str]:
        """Detach everything we attached to `cgroup`; returns the program names."""
        cgroup = Path(cgroup)
        mine = self.attachments(cgroup)
        if not mine:
            return []
        try:
            fd = _open_cgroup(cgroup)
        except LoaderError:
            # The cgroup is gone and the kernel detached with it.
            for a in mine:
                self._attached.remove(a)
            return [a.program for a in mine]
        try:
            for a in reversed(mine):
                self._detach_one(fd, a)
        finally:
            os.close(fd)
        return [a.program for a in mine]

    def detach_all(self) -> None:
        errors = []
        for cg in dict.fromkeys(a.cgroup for a in self._attached):
            try:
                self.detach(cg)
            except LoaderError as e:
                errors.append(str(e))
        if errors:
            raise LoaderError("; ".join(errors))

    def close(self) -> None:
        try:
            self.detach_all()
        finally:
            self.bpf.cleanup()


def _prog_id(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    raise LoaderError(f"fd {fd} is not a BPF program")


def _bpftool_json(*args: str) -> list:
    try:
        out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise LoaderError("bpftool not found; install it (`apt-get install bpftool`) so the agent can "
                          "clean up after a crashed predecessor") from None
    if out.returncode != 0:
        raise LoaderError(f"bpftool {' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
    text = out.stdout.strip()
    return json.loads(text) if text else []


def compile_defines() -> list[str]:
    """Every number the C side shares with Python, as -D flags (config.h has no copies)."""
    return [*ports.bpf_defines(), *origdst_layout.bpf_defines(), f"-DEXCLUDED_PORTS_MAX={EXCLUDED_PORTS_MAX}",
            f"-DNODE_ADDRS_MAX={NODE_ADDRS_MAX}"]


def origdst_entry(table, netns_cookie: int, sport: int):
    """Look up one origdst entry (tests and debugging; ztunnel uses bpf(2) itself)."""
    key = table.Key.from_buffer_copy(origdst_layout.encode_key(netns_cookie, sport))
    try:
        return table[key]
    except KeyError:
        return None


def leaf_address(leaf) -> tuple[str, int]:
    """(ip, port) from an origdst value, decoded by the one layout module."""
    return origdst_layout.decode_value(bytes(leaf))
