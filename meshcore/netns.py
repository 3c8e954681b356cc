"""Network-namespace helpers: run a short synchronous step inside another netns.

Linux binds a socket to the network namespace of the thread that creates it, and the
socket keeps that namespace for life. So ztunnel (one process per node) can own
listeners and outbound sockets *inside* each pod's namespace by switching the calling
thread into the pod's netns just long enough to create them, the way Istio's in-pod
ztunnel does. The CLI uses the same trick to reach node-local admin ports in the lab.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from pathlib import Path
from typing import Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
SO_NETNS_COOKIE = 71  # linux/socket.h, since 5.14

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def netns_path(name_or_path: str) -> Path:
    """`ip netns` name (under /run/netns) or an absolute path such as /proc/PID/ns/net."""
    p = Path(name_or_path)
    return p if p.is_absolute() else NETNS_RUN_DIR / name_or_path


def open_netns(name_or_path: str) -> int:
    """Open a netns and return an fd (O_RDONLY|O_CLOEXEC); the caller closes it."""
    path = netns_path(name_or_path)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"network namespace {name_or_path!r} not found at {path}") from None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns(CLONE_NEWNET) failed: {os.strerror(err)} (needs CAP_SYS_ADMIN)")


@contextlib.contextmanager
def entered(netns_fd: int, home: int | None = None) -> Iterator[None]:
    """Switch the calling thread into `netns_fd` for the block, then switch back (to `home`,
    an fd of the thread's own netns, when the caller keeps one: `home_fd()`).

    Keep the block short and synchronous (create/bind/connect sockets): nothing else
    may run on this thread meanwhile, which holds for trio's single-threaded loop.
    """
    own = home if home is not None else os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(netns_fd)
        try:
            yield
        finally:
            _setns(own)
    finally:
        if home is None:
            os.close(own)


_home: list[int] = []


def home_fd() -> int:
    """An fd of this process's netns, opened once: what `entered(fd, home_fd())` returns to
    without an open() and close() of /proc per call (a new inbound connection makes one).
    Only for a thread that never stays in another netns: ztunnel's trio thread."""
    if not _home:
        _home.append(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
    return _home[0]


@contextlib.contextmanager
def entered_named(name_or_path: str) -> Iterator[None]:
    fd = open_netns(name_or_path)
    try:
        with entered(fd):
            yield
    finally:
        os.close(fd)


def socket_in(netns_fd: int, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
    """A plain socket created inside `netns_fd`."""
    with entered(netns_fd):
        return socket.socket(family, type)


def netns_cookie(sock: socket.socket) -> int:
    """The kernel's 64-bit cookie of the socket's netns (what bpf_get_netns_cookie returns)."""
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def same_netns(a: str, b: str) -> bool:
    sa, sb = os.stat(netns_path(a)), os.stat(netns_path(b))
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
