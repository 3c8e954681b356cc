"""Find kernel headers bcc can compile against, without touching /lib/modules.

libbcc (0.26) looks in /lib/modules/$(uname -r)/{build,source} unless the environment
variable BCC_KERNEL_SOURCE names one directory; in that case it uses only that
directory (relative -I paths, no separate build tree). Debian splits its headers into
an arch tree (`-amd64`: generated headers, .config) and a shared tree (`-common`: the
real headers), so when we point bcc somewhere we first merge the pair into one tree of
symlinks under /run/trellis/kernel-headers/<name>, which bcc then reads as a source
tree that has its generated files in place.
"""
from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/run/trellis/kernel-headers")


class HeadersNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class KernelHeaders:
    build: Path      # arch tree: include/generated, arch/<arch>/include/generated
    source: Path     # shared tree: include/linux, arch/<arch>/include/asm

    @property
    def name(self) -> str:
        return self.build.name if self.build != self.source else self.source.name


def _usable(build: Path, source: Path) -> bool:
    return ((build / "include" / "generated").is_dir()
            and (source / "include" / "linux" / "kconfig.h").is_file())


def _version_key(name: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def find_headers(root: Path = Path("/"), release: str | None = None) -> KernelHeaders:
    """The running kernel's headers if installed, else the newest /usr/src pair."""
    release = release or platform.release()
    looked: list[str] = []
    mod = root / "lib" / "modules" / release
    looked.append(str(mod / "{build,source}"))
    build, source = mod / "build", mod / "source"
    if not source.is_dir():
        source = build
    if build.is_dir() and _usable(build, source):
        return KernelHeaders(build.resolve(), source.resolve())
    usr_src = root / "usr" / "src"
    looked.append(str(usr_src / "linux-headers-*"))
    candidates = sorted(usr_src.glob("linux-headers-*"), key=lambda p: _version_key(p.name), reverse=True)
    for cand in candidates:
        if cand.name.endswith("-common"):
            continue
        # Debian names the pair linux-headers-6.1.0-56-amd64 / linux-headers-6.1.0-56-common.
        common = cand.parent / re.sub(r"-[^-]+$", "-common", cand.name)
        src = common if common.is_dir() else cand
        if _usable(cand, src):
            return KernelHeaders(cand, src)
    raise HeadersNotFound(
        f"no kernel headers for kernel {release}: looked in {' and '.join(looked)}. "
        f"Install them with `apt-get install linux-headers-{release}`, or on Debian when "
        f"that package does not exist, `apt-get install linux-headers-amd64` (any recent "
        f"version works for the mesh's networking programs)")


def _merge(dst: Path, trees: list[Path]) -> None:
    """Union of `trees` as symlinks; a name that is a directory in several trees is merged."""
    dst.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[Path]] = {}
    for tree in trees:
        for entry in sorted(tree.iterdir()):
            names.setdefault(entry.name, []).append(entry)
    for name, entries in names.items():
        dirs = [e for e in entries if e.is_dir()]
        target = dst / name
        if len(dirs) > 1:
            _merge(target, dirs)
        elif not target.exists() and not target.is_symlink():
            target.symlink_to(entries[0].resolve())


def prepare(headers: KernelHeaders, state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    """One directory bcc can use as BCC_KERNEL_SOURCE; built once, reused after."""
    if headers.build == headers.source:
        return headers.source
    merged = state_dir / headers.name
    done = merged / ".trellis-merged"
    if not done.exists():
        tmp = state_dir / f".{headers.name}.{os.getpid()}"
        _merge(tmp, [headers.build, headers.source])
        (tmp / ".trellis-merged").write_text(f"{headers.build}\n{headers.source}\n")
        try:
            tmp.rename(merged)
        except OSError:
            if not done.exists():  # lost a race to another agent only if it finished
                raise
    return merged


def use_headers(root: Path = Path("/"), state_dir: Path = DEFAULT_STATE_DIR) -> Path:
    """Point bcc at usable headers (sets BCC_KERNEL_SOURCE) and return the directory."""
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return Path(os.environ["BCC_KERNEL_SOURCE"])
    found = find_headers(root)
    try:
        path = prepare(found, state_dir)
    except OSError as e:
        raise HeadersNotFound(f"found kernel headers {found.build} + {found.source} but could not lay them "
                              f"out for bcc under {state_dir}: {e.strerror} (is it writable? run as root)") from None
    os.environ["BCC_KERNEL_SOURCE"] = str(path)
    return path
