"""ztunnel, assembled: bind every listener first, then run them all in one nursery.

With the control plane away it keeps serving from the last snapshot and still-valid
certificates (new connections included), and says so in /healthz and the metrics.

SIGTERM drains (docs/internals.md "Restarts"): the node agent socket and the admin,
metrics and readiness ports close at once, so a successor can bind them and the node
agent hands it every pod; the pods stop accepting (the node agent's copies of their
listening sockets keep queueing for the successor) and open connections finish until
the drain deadline (--drain-timeout), then ztunnel exits.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from meshcore import admin, ports
from meshcore.certs import CertificateManager
from meshcore.cpclient import keep_watching
from meshcore.state import State

from . import route
from .inputs import ProxyInputs
from .metrics import Metrics
from .pods import PodManager
from .zds import ZdsServer

log = logging.getLogger("trellis.ztunnel")
# the admin routes that are also served on the metrics port (see App.inspection_routes)
INSPECTION_PATHS = ("/config_dump", "/workloads", "/services", "/policies", "/certs", "/pods", "/healthz")


class ControlPlane(Protocol):
    connected: bool
    version: int | None

    async def sign(self, csr_pem: bytes) -> tuple[list, list]: ...

    async def watch(self, on_update, *, task_status=trio.TASK_STATUS_IGNORED) -> None: ...


@dataclass
class Config:
    node: str
    control_plane: tuple[str, int]
    credential_dir: Path
    run_dir: Path
    trust_domain: str = "cluster.local"
    admin: tuple[str, int] = ("127.0.0.1", ports.ZTUNNEL_ADMIN)
    metrics: tuple[str, int] = ("0.0.0.0", ports.METRICS)
    ready: tuple[str, int] = ("0.0.0.0", ports.READY)
    drain_timeout: float = 30.0


def _as_unix(t: Any) -> float | None:
    if t is None:
        return None
    if isinstance(t, dt.datetime):
        return t.timestamp()
    return float(t)


class Ztunnel:
    def __init__(self, config: Config, control_plane: ControlPlane) -> None:
        self.config, self.cp = config, control_plane
        self.state = State(trust_domain=config.trust_domain)
        self.metrics = Metrics()
        self.certs = CertificateManager(control_plane, config.trust_domain)
        self.origdst_fd: int | None = None
        self.inputs = ProxyInputs(state=lambda: self.state, certs=self.certs, metrics=self.metrics,
                                  origdst_fd=lambda: self.origdst_fd, trust_domain=config.trust_domain,
                                  pick=route.RoundRobin(), drain_timeout=config.drain_timeout,
                                  configured=self._wait_configured)
        self._configured = trio.Event()
        self.pods: PodManager | None = None
        self.unreachable_since: float | None = time.time()
        self.draining = False

    # ---- control plane -------------------------------------------------------------
    def on_update(self, resources: Any, version: int | None) -> None:
        try:
            new = State.from_resources(resources, trust_domain=self.config.trust_domain, version=version)
        except Exception:  # a bad snapshot must not take down a proxy that still has a good one
            log.exception("cannot apply config version %s; keeping version %s", version, self.state.version)
            return
        for w in new.warnings:
            log.warning("config: %s", w)
        self.state = new
        self._configured.set()
        if version is not None:
            self.metrics.config_version.set(version)
        log.info("applied config version %s: %d workloads, %d services, %d policies", version,
                 len(new.workloads), len(new.services), len(new.policies))

    async def _wait_configured(self) -> None:
        await self._configured.wait()

    def on_hello(self, fd: int, node: str) -> None:
        if node and node != self.config.node:
            log.warning("node agent says node %r but this ztunnel serves %r; check --node", node, self.config.node)
        old, self.origdst_fd = self.origdst_fd, fd
        if old is not None:
            os.close(old)
        log.info("node agent connected; origdst map fd %d", fd)

    async def _track_control_plane(self) -> None:
        while True:
            connected = bool(getattr(self.cp, "connected", False))
            self.metrics.cp_connected.set(1 if connected else 0)
            last = _as_unix(getattr(self.cp, "last_contact", None))
            if last is not None:
                self.metrics.cp_last_contact.set(last)
            if connected:
                self.unreachable_since = None
            elif self.unreachable_since is None:
                self.unreachable_since = time.time()
                log.warning("control plane unreachable; serving from config version %s and current "
                            "certificates", self.state.version)
            await trio.sleep(1)

    # ---- admin -----------------------------------------------------------------------
    def healthz(self) -> dict[str, Any]:
        if getattr(self.cp, "connected", False):
            cp = "connected"
        else:
            since = dt.datetime.fromtimestamp(self.unreachable_since or time.time(), dt.timezone.utc)
            cp = f"unreachable since {since.isoformat(timespec='seconds')}"
        return {"node": self.config.node, "control_plane": cp, "version": self.state.version,
                "lastError": getattr(self.cp, "last_error", None), "pods": len(self.pods.pods) if self.pods else 0,
                "origdstMap": self.origdst_fd is not None, "draining": self.draining}

    def routes(self) -> dict[str, admin.Handler]:
        def json_route(fn):
            async def handler(_req):
                return admin.Response(fn())
            return handler
        return {
            "/config_dump": json_route(lambda: {"state": self.state.dump(), "certs": self.certs.dump(),
                                                "pods": self.pods.dump() if self.pods else [],
                                                "health": self.healthz()}),
            "/workloads": json_route(lambda: self.state.dump()["workloads"]),
            "/services": json_route(lambda: self.state.dump()["services"]),
            "/policies": json_route(lambda: self.state.dump()["policies"]),
            "/certs": json_route(self.certs.dump),
            "/pods": json_route(lambda: self.pods.dump() if self.pods else []),
            "/healthz": json_route(self.healthz),
        }

    def inspection_routes(self) -> dict[str, admin.Handler]:
        """What `trellis workloads ... --kubeconfig` reads through the API server's pod proxy,
        which dials the pod IP: the admin port stays on 127.0.0.1, so the metrics port (already
        reachable off the pod, as Prometheus needs) also serves these read-only GETs. They
        carry names, addresses and certificate metadata, never key material, as /metrics
        already carries names and addresses. A route that changes state or debugs (none yet)
        belongs on the admin port only."""
        return {p: h for p, h in self.routes().items() if p in INSPECTION_PATHS}

    async def _ready(self, _req) -> admin.Response:
        if self.draining:
            return admin.Response({"ready": False, "why": "draining for shutdown"}, 503)
        if self.state.version is None:
            return admin.Response({"ready": False, "why": "waiting for the first config snapshot from the "
                                                          f"control plane at {self.config.control_plane[0]}:"
                                                          f"{self.config.control_plane[1]}"}, 503)
        return admin.Response({"ready": True, "version": self.state.version})

    async def _metrics(self, _req) -> admin.Response:
        return admin.Response(self.metrics.render(), content_type="text/plain; version=0.0.4")

    # ---- run --------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:
        c = self.config
        # Bind everything first so a port in use or a bad run dir fails at start-up, loudly.
        self.listeners = listeners = {name: await admin.open_listener(*addr)
                     for name, addr in (("admin", c.admin), ("metrics", c.metrics), ("ready", c.ready))}
        async with trio.open_nursery() as nursery:
            self.pods = self._pod_manager(nursery)
            zds = ZdsServer(self.pods, c.trust_domain, self.on_hello)
            zds_sock = await zds.bind(c.run_dir / "ztunnel.sock")
            await nursery.start(self.certs.run)
            await self._start_workers(nursery)
            # What a successor must be able to bind: closed first when draining.
            front = await nursery.start(self._front_door, zds, zds_sock)
            self._front_scope = front
            nursery.start_soon(keep_watching, self.cp, self.on_update, f"ztunnel {self.config.node}")
            nursery.start_soon(self._track_control_plane)
            if handle_signals:
                nursery.start_soon(self._on_signals, nursery.cancel_scope)
            log.info("ztunnel for node %s up: admin %s:%d, metrics %s:%d, ready %s:%d, zds %s", c.node,
                     *c.admin, *c.metrics, *c.ready, c.run_dir / "ztunnel.sock")
            task_status.started(self)
        if self.origdst_fd is not None:
            os.close(self.origdst_fd)
            self.origdst_fd = None

    def _pod_manager(self, nursery: trio.Nursery) -> Any:
        """Who serves the pods the node agent hands over: here, this process (PodManager);
        ztunnel.owner.Owner hands them to its worker processes instead."""
        return PodManager(self.inputs, nursery)

    async def _start_workers(self, nursery: trio.Nursery) -> None:
        """One process serves everything: nothing to start (see ztunnel.owner.Owner)."""

    async def _front_door(self, zds: ZdsServer, zds_sock, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        c = self.config
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as front:
                await front.start(zds.serve, zds_sock)
                for name, addr, routes in (("admin", c.admin, self.routes()),
                                           ("metrics", c.metrics, {"/metrics": self._metrics,
                                                                   **self.inspection_routes()}),
                                           ("ready", c.ready, {"/healthz/ready": self._ready})):
                    await front.start(functools.partial(admin.serve_http, *addr, routes,
                                                        listener=self.listeners[name]))
                task_status.started(scope)  # trio closes each listener as its accept loop ends

    async def shutdown(self, scope: trio.CancelScope) -> None:
        """Stop accepting, drain open connections until the deadline, then stop everything."""
        self.draining = True
        log.info("shutting down: draining %d pod(s) for up to %.0fs", len(self.pods.pods) if self.pods else 0,
                 self.config.drain_timeout)
        if getattr(self, "_front_scope", None) is not None:
            self._front_scope.cancel()  # the node agent moves its pods to our successor
        if self.pods is not None:
            await self.pods.drain_all(self.config.drain_timeout)
        scope.cancel()

    async def _on_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                await self.shutdown(scope)
                return
