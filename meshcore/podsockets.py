"""A pod's listening sockets, made and checked one way for the node agent and ztunnel.

The node agent creates them inside the pod's netns and keeps a copy for the pod's life,
handing them to whichever ztunnel runs (ZDS `add`, SCM_RIGHTS): while no ztunnel runs
the kernel completes handshakes and queues them in the backlog, and the next ztunnel
accepts them, so a restart refuses nothing (docs/internals.md "Restarts"). ztunnel binds
the same set itself only when a node agent hands over no sockets (tests, old agents).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from . import netns, ports, sockio

# Connections the kernel queues per listener while no ztunnel accepts (capped by
# net.core.somaxconn, 4096 by default): what a restart gap can absorb.
BACKLOG = 1024


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ListenerSpec:
    host: str
    port: int
    role: str           # "outbound" or "inbound" (HBONE)
    required: bool = True

    @property
    def address(self) -> str:
        return _format(self.host, self.port)


POD_LISTENERS = (
    ListenerSpec("127.0.0.1", ports.OUTBOUND, "outbound"),
    # Pods without IPv6 loopback are common; IPv4 capture still works without it.
    ListenerSpec("::1", ports.OUTBOUND, "outbound", required=False),
    ListenerSpec("0.0.0.0", ports.HBONE, "inbound"),
)
BY_ADDRESS = {spec.address: spec for spec in POD_LISTENERS}


def address_of(sock: socket.socket) -> str:
    """"127.0.0.1:PORT" or "[::1]:PORT": how ZDS names a listener."""
    return _format(*sock.getsockname()[:2])


def _listening(netns_fd: int, family: int, host: str, port: int, *, join_group: bool) -> socket.socket:
    raw = netns.socket_in(netns_fd, family)
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if join_group:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        raw.bind((host, port))
        # A first member binds without SO_REUSEPORT, so a second plain bind (a restarted node
        # agent) still gets EADDRINUSE; set before listen() it founds a reuseport group that
        # ztunnel's workers' sockets (bind_sibling) join: the kernel spreads connections over them.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        raw.listen(BACKLOG)
    except BaseException:
        raw.close()
        raise
    return raw


def bind_one(netns_fd: int, spec: ListenerSpec) -> socket.socket:
    try:
        return _listening(netns_fd, sockio.family_of(spec.host), spec.host, spec.port, join_group=False)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot bind the {spec.role} listener {spec.address} in the pod netns: "
                                 f"{exc.strerror} (another ztunnel or node agent already holds it?)") from None


def bind_sibling(netns_fd: int, primary: socket.socket) -> socket.socket:
    """Another listener at `primary`'s address in its reuseport group (one per ztunnel
    worker). OSError if `primary` is not in one (a node agent older than the groups)."""
    host, port = primary.getsockname()[:2]
    try:
        return _listening(netns_fd, primary.family, host, port, join_group=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot add a worker listener at {_format(host, port)} in the pod netns: "
                                 f"{exc.strerror} (is the node agent's listener without SO_REUSEPORT?)") from None


def steer_to_cpu(sock: socket.socket, cpu: int) -> None:
    """SO_INCOMING_CPU on a listener of a reuseport group (Linux >= 6.2 honours it there): a
    new connection whose SYN the kernel handles on `cpu` goes to this listener, one on a CPU
    no listener names to the group's hash. A ztunnel worker pinned to `cpu` then serves its
    connections where their packets arrive. Any member may be set at any time: the group
    picks by the member's value, not its position, so joins and leaves reorder nothing."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_INCOMING_CPU, cpu)


MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def migrate_on_close(netns_fd: int) -> bool:
    """net.ipv4.tcp_migrate_req=1 in the pod's netns (Linux >= 5.14): connections queued on a
    worker's listener when it closes move to another listener of the group instead of being
    reset. Per netns; it only affects reuseport groups. False where the kernel lacks it."""
    try:
        with netns.entered(netns_fd):
            with open(MIGRATE_REQ, "w") as f:
                f.write("1")
        return True
    except (OSError, netns.NetnsError):
        return False


def bind_all(netns_fd: int) -> list[socket.socket]:
    """Every listener of POD_LISTENERS that can be bound (all required ones, or OSError)."""
    out: list[socket.socket] = []
    try:
        for spec in POD_LISTENERS:
            try:
                out.append(bind_one(netns_fd, spec))
            except OSError:
                if spec.required:
                    raise
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


def adopt(fds: list[int], addresses: tuple[str, ...], netns_fd: int) -> list[socket.socket]:
    """Sockets from received fds, each checked: a listening TCP socket, at the address the
    message names, inside the pod's netns. Takes ownership of `fds` (closed on error)."""
    socks = [socket.socket(fileno=fd) for fd in fds]
    try:
        probe = netns.socket_in(netns_fd)
        try:
            want_cookie = netns.netns_cookie(probe)
        finally:
            probe.close()
        for sock, address in zip(socks, addresses, strict=True):
            if address not in BY_ADDRESS:
                raise ValueError(f"listener {address} is not one of {', '.join(BY_ADDRESS)}")
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise ValueError(f"listener {address}: the fd is not a listening TCP socket")
            if address_of(sock) != address:
                raise ValueError(f"listener {address}: the fd is bound to {address_of(sock)}")
            if netns.netns_cookie(sock) != want_cookie:
                raise ValueError(f"listener {address}: the socket is not in the pod's netns")
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def netns_identity(netns_fd: int) -> tuple[int, int]:
    """(st_dev, st_ino): equal for two fds of the same network namespace."""
    st = os.fstat(netns_fd)
    return st.st_dev, st.st_ino
