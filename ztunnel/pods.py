"""Per-pod proxies: listeners inside the pod's netns, started on `add`, drained on `remove`.

Listeners come from the node agent (it keeps a copy, so connections queue in the kernel
while no ztunnel runs) or, when it sends none, are bound here before anything serves, so
`add` answers the node agent with a bind error at once. Each pod gets its own HBONE client pool: pooled connections carry
the source pod's IP, so they must never be shared between pods of one identity.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from functools import partial
from typing import Any

import trio
from trio.lowlevel import checkpoint, wait_readable

from meshcore import netns, podsockets, sockio
from meshcore.hbone.client import HboneClientPool
from meshcore.hbone.server import ServerStats, serve_hbone

from .inbound import Inbound
from .inputs import ProxyInputs
from .outbound import Outbound
from .podinfo import PodInfo

log = logging.getLogger("trellis.ztunnel.pods")
# accept() errors that concern only the connection being accepted (Linux hands a new socket's
# pending network error to accept()): skipped, as trio's SocketListener skips the same list.
ACCEPT_SKIP = {getattr(errno, name) for name in (
    "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
    "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT", "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET")
    if hasattr(errno, name)}
# How long a pod's listeners stay unserved waiting for its first certificate; past it,
# connections are served (and fail with advice) rather than held without an answer.
CERT_WAIT = 10.0


class DrainableListener(trio.abc.Listener[trio.SocketStream]):
    """A listener that can stop accepting without failing the accept loop serving it."""

    def __init__(self, sock: trio.socket.SocketType, raw: socket.socket | None = None) -> None:
        self._inner = trio.SocketListener(sock)
        self.socket = sock
        self.raw = raw   # the stdlib socket under `sock` (the outbound accept loop takes it directly)
        self.draining = False
        self._scope: trio.CancelScope | None = None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def accept(self) -> trio.SocketStream:
        if not self.draining:
            with trio.CancelScope() as self._scope:
                try:
                    return await self._inner.accept()
                except trio.ClosedResourceError:
                    if not self.draining:
                        raise
        await trio.sleep_forever()

    def drain(self) -> None:
        self.draining = True
        if self._scope is not None:
            self._scope.cancel()
        # Our copy only: while the node agent holds its own, new connections queue for the
        # next ztunnel; once it has let go too (pod removed) new SYNs get RST.
        self.socket.close()


class Pod:
    def __init__(self, info: PodInfo, inputs: ProxyInputs) -> None:
        self.info, self.inputs = info, inputs
        self.outbound_listeners: list[DrainableListener] = []
        self.inbound_listeners: list[DrainableListener] = []
        self.outbound: Outbound | None = None
        self.inbound: Inbound | None = None
        self._scope = trio.CancelScope()
        self.done = trio.Event()
        self.state = "starting"
        self.started = False

    def bind(self) -> None:
        socks = list(self.info.listeners) or podsockets.bind_all(self.info.netns_fd)
        for sock in socks:
            role = podsockets.BY_ADDRESS[podsockets.address_of(sock)].role
            listeners = self.outbound_listeners if role == "outbound" else self.inbound_listeners
            if role == "outbound":
                # Inherited by every accepted connection (Linux copies it from the listener):
                # no setsockopt per connection. The app's bytes are forwarded as they come.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            listeners.append(DrainableListener(trio.socket.from_stdlib_socket(sock), sock))
        if not self.outbound_listeners or not self.inbound_listeners:
            for listener in self.outbound_listeners + self.inbound_listeners:
                listener.socket.close()
            raise OSError(f"pod {self.info.uid}: the node agent handed over no "
                          f"{'outbound' if not self.outbound_listeners else 'inbound'} listener")

    def listener_fds(self) -> list[tuple[str, int]]:
        """(address, fd) of each listener still accepting (fds stay ours)."""
        return [(podsockets.address_of(l.socket), l.socket.fileno())
                for l in self.outbound_listeners + self.inbound_listeners if not l.draining]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started, serve until cancelled or drained."""
        self.bind()
        self.inputs.certs.want(self.info.identity)
        cookie = netns.netns_cookie(self.outbound_listeners[0].socket)
        try:
            with self._scope:
                async with HboneClientPool(self.inputs.certs.ssl_context_for,
                                           self.info.socket_factory) as pool, trio.open_nursery() as nursery:
                    outbound = self.outbound = Outbound(self.info, self.inputs, pool, cookie)
                    self.inbound = Inbound(self.info, self.inputs)
                    self.started = True
                    task_status.started(self)  # bound: the add succeeded
                    if self.inputs.configured is not None:
                        # Until we can route and present the pod's certificate, connections
                        # wait in the kernel's queue (a restart) instead of failing.
                        self.state = "waiting for config"
                        await self.inputs.configured()
                        self.state = "waiting for certificate"
                        with trio.move_on_after(CERT_WAIT):
                            await self.inputs.certs.wait_ready(self.info.identity)
                    for listener in self.outbound_listeners:
                        nursery.start_soon(self._accept_loop, listener, outbound)
                    await nursery.start(partial(serve_hbone, stats=ServerStats(on_event=self.inputs.metrics.hbone_event)),
                                        self.inbound_listeners,
                                        lambda: self.inputs.certs.ssl_context_for(self.info.identity, server=True),
                                        self.inbound.handle)
                    self.state = "serving"
        finally:
            self.state = "stopped"
            if self.inbound is not None:
                self.inbound.delivery.close()   # the sockets it made ahead in the pod's netns
            self.inputs.certs.release(self.info.identity)
            self.done.set()

    async def _accept_loop(self, listener: DrainableListener, outbound: Outbound) -> None:
        """Accept on the stdlib socket until EAGAIN, each connection handed to its own task
        with the peer address accept() returned: no trio SocketStream, cancel scope, or
        detach (socket(fileno=) asks the kernel three questions) per connection. Yields
        after FAIR_ROUNDS accepts without a wait, so a flood cannot starve the others."""
        raw, accepted = listener.raw, 0
        async with trio.open_nursery() as conns:
            async with listener:
                while not listener.draining:
                    try:
                        conn, peer = raw.accept()
                    except BlockingIOError:
                        accepted = 0
                        try:
                            await wait_readable(raw)
                        except trio.ClosedResourceError:   # drained: the socket was closed under us
                            break
                        continue
                    except OSError as exc:
                        if listener.draining:
                            break
                        if exc.errno in ACCEPT_SKIP:
                            continue
                        log.error("pod %s: outbound accept failed (%s); backing off", self.info.uid, exc)
                        await trio.sleep(0.1)
                        continue
                    conn.setblocking(False)
                    conns.start_soon(outbound.handle, conn, peer)
                    accepted += 1
                    if accepted >= sockio.FAIR_ROUNDS:
                        accepted = 0
                        await checkpoint()
                await trio.sleep_forever()   # drained: open connections finish in `conns`

    @property
    def active(self) -> int:
        return (self.outbound.active if self.outbound else 0) + (self.inbound.active if self.inbound else 0)

    async def drain(self, deadline: float) -> None:
        """Stop accepting, let open connections finish until `deadline` (trio time), then cut them."""
        self.state = "draining"
        for listener in self.outbound_listeners + self.inbound_listeners:
            listener.drain()
        with trio.move_on_at(deadline):
            while self.active > 0:
                await trio.sleep(0.05)
        if self.active:
            log.warning("pod %s: closing %d connection(s) still open at the drain deadline",
                        self.info.uid, self.active)
        self._scope.cancel()
        await self.done.wait()

    def dump(self) -> dict[str, Any]:
        return dict(self.info.dump(), state=self.state, activeConnections=self.active,
                    listeners=[f"{l.socket.getsockname()[0]}:{l.socket.getsockname()[1]}"
                               for l in self.outbound_listeners + self.inbound_listeners if not l.draining])


async def already_served(manager, info: PodInfo):
    """The pod `manager` (a PodManager, or the owner's SharedPods) already serves for an add
    of the same uid and netns (a node agent restart: `info`'s fds are closed, the running one
    stays); None otherwise, after removing one whose netns changed (the pod was recreated: the
    old listeners serve a netns that is gone or about to be)."""
    old = manager.pods.get(info.uid)
    if old is None:
        return None
    if old.info.netns_id == info.netns_id:
        os.close(info.netns_fd)
        info.close()
        return old
    log.info("pod %s: network namespace changed; replacing it", info.uid)
    await manager.remove(info.uid)
    return None


class PodManager:
    """Pods by uid; `add` returns once the pod's listeners are bound (or raises why not)."""

    def __init__(self, inputs: ProxyInputs, nursery: trio.Nursery) -> None:
        self.inputs, self.nursery = inputs, nursery
        self.pods: dict[str, Pod] = {}

    async def add(self, info: PodInfo) -> Pod:
        old = await already_served(self, info)
        if old is not None:
            return old
        pod = Pod(info, self.inputs)
        try:
            await self.nursery.start(self._run_pod, pod)
        except BaseException:
            os.close(info.netns_fd)
            info.close()
            raise
        self.pods[info.uid] = pod
        return pod

    async def _run_pod(self, pod: Pod, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await pod.run(task_status=task_status)
        finally:
            if self.pods.get(pod.info.uid) is pod:
                del self.pods[pod.info.uid]
            if pod.started:  # before that, add() owns the fd and closes it on failure
                os.close(pod.info.netns_fd)

    async def remove(self, uid: str, drain_timeout: float | None = None) -> bool:
        pod = self.pods.pop(uid, None)
        if pod is None:
            return False
        timeout = self.inputs.drain_timeout if drain_timeout is None else drain_timeout
        self.nursery.start_soon(pod.drain, trio.current_time() + timeout)
        return True

    async def drain_all(self, timeout: float) -> None:
        deadline = trio.current_time() + timeout
        pods, self.pods = list(self.pods.values()), {}
        async with trio.open_nursery() as n:
            for pod in pods:
                n.start_soon(pod.drain, deadline)

    def dump(self) -> list[dict[str, Any]]:
        return [p.dump() for p in sorted(self.pods.values(), key=lambda p: p.info.uid)]
