"""Outbound: accept on the pod's outbound capture port -> original destination -> route -> HBONE or plain TCP.

Sockets to the destination are created inside the *source pod's* netns so packets leave
with the pod's own IP, as Istio's in-pod ztunnel does.
"""
from __future__ import annotations

import logging
import socket
import time

import trio

from meshcore import netns, sockio
from meshcore.hbone.client import HboneClientPool
from meshcore.certs import CertificateUnavailable
from meshcore.hbone.errors import HboneError
from meshcore.telemetry import ConnLabels, log_connection

from . import origdst, route
from .copy import Transfer, relay_sockets, relay_tunnel
from .inputs import ProxyInputs
from .podinfo import PodInfo

log = logging.getLogger("trellis.ztunnel.outbound")


async def open_tcp_in(netns_fd: int, address: tuple[str, int], timeout: float,
                      sock: socket.socket | None = None) -> socket.socket:
    """A non-blocking TCP socket connected from inside `netns_fd` (or `sock`, made there
    already), with errors worded as advice."""
    sock = sock or netns.socket_in(netns_fd, sockio.family_of(address[0]))
    try:
        return await sockio.connect(sock, address, timeout)
    except trio.TooSlowError:
        raise ConnectionError(f"connection to {address[0]}:{address[1]} timed out after {timeout:g}s; "
                              f"maybe a NetworkPolicy or firewall drops it") from None
    except OSError as exc:
        raise ConnectionError(f"connection to {address[0]}:{address[1]} failed: {exc.strerror or exc}") from None


LABEL_SETS = 4096   # cached label sets per pod (by destination), a bound against churning workloads


def _labels(pod: PodInfo, r: route.Route, secure: bool, cache: dict) -> ConnLabels:
    """The connection's metric labels; one ConnLabels per destination, built once (a
    frozen dataclass of nine fields costs more than the lookup) and shared by its
    connections, which also keeps the metrics' per-label-set lookup cached."""
    dest = getattr(r, "destination", None)
    service = getattr(r, "service", None)
    key = (dest.namespace, dest.name, dest.identity, service, secure) if dest else (service, secure)
    labels = cache.get(key)
    if labels is None:
        if len(cache) >= LABEL_SETS:
            cache.clear()
        labels = cache[key] = _build_labels(pod, dest, service, secure)
    return labels


def _build_labels(pod: PodInfo, dest, service: str | None, secure: bool) -> ConnLabels:
    return ConnLabels(
        reporter="source", source_workload=pod.name, source_workload_namespace=pod.namespace,
        source_principal=pod.identity,
        destination_workload=dest.name if dest else "unknown",
        destination_workload_namespace=dest.namespace if dest else "unknown",
        destination_principal=dest.identity if (dest and secure) else "unknown",
        destination_service=service or "unknown",
        connection_security_policy="mutual_tls" if secure else "unknown")


class Outbound:
    def __init__(self, pod: PodInfo, inputs: ProxyInputs, pool: HboneClientPool, netns_cookie: int) -> None:
        self.pod, self.inputs, self.pool, self.cookie = pod, inputs, pool, netns_cookie
        self.active = 0   # connections being proxied
        self._labels: dict[tuple, ConnLabels] = {}

    def original_destination(self, peer_port: int) -> tuple[str, int] | None:
        fd = self.inputs.origdst_fd()
        if fd is None:
            return None
        return origdst.take(fd, self.cookie, peer_port)

    def _route(self, peer: tuple) -> tuple[str, str, route.Route] | None:
        """(source, original destination, route) for a connection accepted from `peer`;
        None, after logging why, when it has no destination to go to."""
        src = f"{self.pod.address}:{peer[1]}"
        try:
            dst = self.original_destination(peer[1])
        except OSError as exc:
            dst, why = None, f"origdst map lookup failed: {exc}"
        else:
            why = None
        if dst is None:
            log.warning("outbound %s from %s: %s", src, self.pod.uid, why or
                        "no original destination recorded: is the connection captured by the node agent's eBPF?")
            return None
        state = self.inputs.state()
        r = route.decide(state, state.workload_by_uid(self.pod.uid), dst, self.inputs.pick)
        return src, f"{dst[0]}:{dst[1]}", r

    async def handle(self, sock: socket.socket, peer: tuple) -> None:
        """One accepted connection (a non-blocking socket, and its peer's address as accept()
        returned it), from routing to the last byte (one task: its frame is most of what an
        idle proxied connection costs here)."""
        started = time.monotonic()
        found = self._route(peer)
        if found is None:
            sockio.close_unwatched(sock)
            return
        src, dst, r = found
        labels = _labels(self.pod, r, isinstance(r, route.Hbone), self._labels)
        transfer, tunnel, plain, outcome = Transfer(), None, None, "ok"
        self.active += 1
        try:
            if isinstance(r, route.Refuse):
                raise ConnectionRefusedError(r.reason)
            if isinstance(r, route.Hbone):
                tunnel = await self.pool.connect(r.hbone_address, r.authority, r.expected_identity,
                                                 self.pod.identity, socket_factory=self.pod.socket_factory)
            else:
                plain = await open_tcp_in(self.pod.netns_fd, (r.ip, r.port), self.inputs.connect_timeout)
            self.inputs.metrics.connection_opened(labels)
            try:
                if tunnel is not None:
                    transfer = await relay_tunnel(sock, tunnel, sock_role="downstream")
                else:
                    transfer = await relay_sockets(sock, plain)
            finally:
                self.inputs.metrics.connection_closed(labels, transfer.sent, transfer.received)
            if transfer.error:
                outcome = "reset"
        except (HboneError, CertificateUnavailable, ConnectionError, OSError) as exc:
            outcome, transfer.error = "error", str(exc)
        finally:
            self.active -= 1
            if tunnel is not None:
                tunnel.close()
            sockio.close_unwatched(plain)   # the relay ended: nothing waits on them
            sockio.close_unwatched(sock)
            log_connection(direction="outbound", src=src, dst=dst, labels=labels, sent=transfer.sent,
                           received=transfer.received, started=started, outcome=outcome, error=transfer.error,
                           route=type(r).__name__, endpoint=_endpoint(r), waypoint=getattr(r, "waypoint", None),
                           reason=getattr(r, "reason", None))


def _endpoint(r: route.Route) -> str | None:
    """Where the bytes went: the HBONE peer (a waypoint replica's or the pod's HBONE port
    when it carries another authority) or the plaintext address."""
    if isinstance(r, route.Hbone):
        return f"{r.endpoint_ip}:{r.hbone_address[1]}" if r.waypoint else r.authority
    return f"{r.ip}:{r.port}" if isinstance(r, route.Plaintext) else None
