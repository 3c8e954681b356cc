"""The caller's address for the app: an inbound connection dialled from the client pod's IP.

Istio ambient and Linkerd show the app its caller's pod address, so that its logs,
rate limits and allow-lists tell callers apart. ztunnel does it as Istio's in-pod mode
does: inside the destination pod's netns, a socket with IP_TRANSPARENT and ztunnel's
mark (meshcore.inpod) is bound to the caller's IP and connected to the app; the node
agent's in-pod rules bring the app's replies back to that socket.

Two guards keep this honest. The address must belong, in the control plane's view, to a
workload with the identity the peer proved in its certificate (a peer cannot make the app
believe it is another pod). And the route back must exist in the pod's netns: it is
checked with one rtnetlink route query (`ip route get CALLER mark 0x111` must say
`local`; the answer is kept for ROUTE_CHECK_TTL per pod and family), because a transparent SYN whose SYN-ACK leaves through eth0 would
hang until the connect timeout. Whenever either fails, or the kernel refuses IP_TRANSPARENT,
ztunnel connects from the pod's own address as before, and says why once per pod.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from typing import Any

from meshcore import inpod, netns

log = logging.getLogger("trellis.ztunnel.inbound")

IP_TRANSPARENT = 19            # linux/in.h
IPV6_TRANSPARENT = 75          # linux/in6.h
IP_BIND_ADDRESS_NO_PORT = 24   # the port is chosen at connect(), by 4-tuple, not at bind()
MAX_NOTICES = 256              # distinct fallback reasons remembered per pod (bounds the log)
ROUTE_CHECK_TTL = 2.0          # seconds a route check holds per pod and family (it costs ~25 us)
STOCK = 8                      # sockets made per trip into the pod's netns (Delivery._fresh)
# rtnetlink (linux/rtnetlink.h, linux/netlink.h)
RTM_NEWROUTE, RTM_GETROUTE, NLM_F_REQUEST, RTA_DST, RTA_MARK, RTN_LOCAL = 24, 26, 1, 1, 16, 2


def original_source(state: Any, peer_identity: str | None, peer_ip: str, pod_address: str) -> tuple[str | None, str]:
    """(the caller's address to deliver from, or None; why). Pure.

    `state.workload_by_address(ip)` is the control plane's view of who lives where."""
    try:
        peer, own = ipaddress.ip_address(peer_ip), ipaddress.ip_address(pod_address)
    except ValueError:
        return None, f"caller address {peer_ip!r} is not an IP address"
    if peer == own:
        return None, "the caller is the pod itself"
    if peer.version != own.version:
        return None, f"caller {peer_ip} and pod {pod_address} are of different IP families"
    w = state.workload_by_address(peer_ip)
    if w is None:
        return None, f"no workload is known at the caller's address {peer_ip}"
    if peer_identity is None or w.identity != peer_identity:
        return None, (f"the caller's address {peer_ip} belongs to {w.namespace}/{w.name} ({w.identity}), "
                      f"not to the identity it presented ({peer_identity})")
    return peer_ip, "verified"


def _transparent(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def _route_back(source: str, family: int) -> bool:
    """In the current netns: is `source` local for packets with the app's reply mark?

    One RTM_GETROUTE (what `ip route get SOURCE mark 0x111` asks): the kernel answers
    from its FIB during sendmsg, so this costs two syscalls and no packet."""
    addr = socket.inet_pton(family, source)
    attrs = _rta(RTA_DST, addr) + _rta(RTA_MARK, struct.pack("=I", inpod.TPROXY_MARK))
    rtmsg = struct.pack("=BBBBBBBBI", family, len(addr) * 8, 0, 0, 0, 0, 0, 0, 0)
    body = rtmsg + attrs
    msg = struct.pack("=IHHII", 16 + len(body), RTM_GETROUTE, NLM_F_REQUEST, 1, 0) + body
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        nl.settimeout(1.0)
        nl.send(msg)
        reply = nl.recv(4096)
    except OSError:
        return False
    finally:
        nl.close()
    if len(reply) < 28 or struct.unpack_from("=H", reply, 4)[0] != RTM_NEWROUTE:
        return False   # NLMSG_ERROR: no route at all (ENETUNREACH)
    return reply[16 + 7] == RTN_LOCAL


def _rta(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _bind_transparent(sock: socket.socket, source: str, family: int) -> tuple[socket.socket | None, str]:
    """`sock` (made in the pod's netns) bound to `source`, or None (it is closed) and why not."""
    try:
        _transparent(sock, family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, inpod.ZTUNNEL_MARK)
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
    except OSError as exc:
        sock.close()
        return None, f"the kernel refused a transparent socket at {source}: {exc.strerror or exc}"
    return sock, "transparent"


class Delivery:
    """Per pod: makes the socket to the app and remembers which fallbacks it has reported.

    A socket belongs to the netns its creating thread is in, so each new one costs two
    setns() calls around socket(); they are made STOCK at a time (non-blocking from the
    start) and handed out as tunnels come. Options and bind() need no switch: they act in
    the socket's own netns. `close()` closes what is left when the pod goes."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self._said: set[str] = set()
        self._routes: dict[int, tuple[float, bool]] = {}   # family -> (checked at, route back exists)
        self._stock: dict[int, list[socket.socket]] = {}   # family -> unused sockets made in the pod's netns

    def _fresh(self, netns_fd: int, family: int) -> socket.socket:
        stock = self._stock.get(family)
        if not stock:
            with netns.entered(netns_fd, netns.home_fd()):
                stock = self._stock[family] = [socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                                               for _ in range(STOCK)]
        return stock.pop()

    def close(self) -> None:
        for stock in self._stock.values():
            for sock in stock:
                sock.close()
        self._stock.clear()

    def notice(self, key: str, message: str, level: int = logging.WARNING) -> None:
        if key in self._said or len(self._said) >= MAX_NOTICES:
            return
        self._said.add(key)
        log.log(level, "pod %s: %s; delivering from the pod's own address (said once)", self.uid, message)

    def socket_for(self, netns_fd: int, state: Any, peer_identity: str | None, peer_ip: str,
                   pod_address: str, origin: tuple[str | None, str] | None = None) -> tuple[socket.socket, str]:
        """An unconnected socket in the pod's netns, and the address the app will see.
        `origin`: original_source()'s answer for this caller, if the caller has it already."""
        source, why = origin or original_source(state, peer_identity, peer_ip, pod_address)
        family = socket.AF_INET6 if ":" in pod_address else socket.AF_INET
        if source is not None:
            now = time.monotonic()
            checked, ok = self._routes.get(family, (-ROUTE_CHECK_TTL, False))
            if now - checked >= ROUTE_CHECK_TTL:
                with netns.entered(netns_fd, netns.home_fd()):
                    ok = _route_back(source, family)
                self._routes[family] = (now, ok)
            if ok:
                sock, why = _bind_transparent(self._fresh(netns_fd, family), source, family)
                if sock is not None:
                    return sock, source
            else:
                why = (f"no route back for replies to {source} in the pod's netns (fwmark {inpod.TPROXY_MARK:#x} "
                       f"-> table {inpod.ROUTE_TABLE}, set by the node agent at enrollment)")
            self.notice("kernel" if why.startswith("the kernel") else "route", why)
        elif why.startswith("the caller's address"):
            self.notice(f"{peer_identity} {peer_ip}", why)
        elif why.startswith("no workload"):
            self.notice(f"unknown {peer_ip}", why, logging.INFO)
        return self._fresh(netns_fd, family), pod_address
