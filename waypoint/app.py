"""The waypoint, assembled (docs/internals.md "waypoint process"): bind every listener first,
then run the certificate worker, the control-plane watch, HBONE in, admin, metrics and
readiness in one nursery.

Certificates: the bootstrap credential from --credential-dir is used until the first
certificate the control plane signs for the waypoint's own identity arrives
(meshcore.certs renews it from then on); open connections keep the context they were made
with. Standalone mode (bench): plaintext listener, the config from a file, no HBONE.
"""
from __future__ import annotations

import functools
import logging
import math
import signal
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import trio

from meshcore import admin, ports, tls
from meshcore.certs import CertificateManager
from meshcore.cpclient import keep_watching
from meshcore.hbone import HboneClientPool, InboundTunnel, serve_hbone
from meshcore.identity import CertBundle, workload_identity
from meshcore.wire import watch

from .conn import ClientConnection
from .metrics import Metrics
from .pipeline import Caller, Pipeline
from .tracing import Settings, Tracer
from .upstream import Upstream
from .view import Target, View

log = logging.getLogger("trellis.waypoint")


@dataclass
class Config:
    namespace: str
    gateway: str
    trust_domain: str = "cluster.local"
    service_account: str = "waypoint"
    control_plane: tuple[str, int] | None = None
    credential_dir: Path | None = None
    hbone: tuple[str, int] = ("0.0.0.0", ports.HBONE)
    admin: tuple[str, int] = ("127.0.0.1", ports.ZTUNNEL_ADMIN)
    metrics: tuple[str, int] | None = ("0.0.0.0", ports.METRICS)
    ready: tuple[str, int] | None = ("0.0.0.0", ports.READY)
    standalone_listen: tuple[str, int] | None = None   # plaintext mode (bench)
    standalone_target: tuple[str, str, int] | None = None   # (ns, service, port) the listener serves
    drain_timeout: float = 10.0
    tracing: Settings | None = None   # span export (--otlp-endpoint, OTEL_*); the Gateway's annotations override
    # after SIGTERM, keep accepting tunnels this long (not ready, each HTTP/1.1 answer closing
    # its connection) before GOAWAY: callers' ztunnels send new connections here until the
    # config without this waypoint reaches them (Istio's terminationDrainDuration, 5 s there)
    drain_grace: float = 3.0
    # the config reaches this waypoint and the callers' ztunnels at different moments: a
    # Service that stopped using it is still served this long (its binding drains, as a
    # removed listener's does), and a tunnel for one it does not serve yet waits this long
    # for a snapshot that says it does, before either is refused
    config_grace: float = 3.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return workload_identity(self.trust_domain, self.namespace, self.service_account)


class Waypoint:
    def __init__(self, config: Config, *, bootstrap: CertBundle | None = None, control_plane: Any = None,
                 certs: CertificateManager | None = None, resources: Iterable[Any] | None = None):
        self.config, self.bootstrap, self.cp = config, bootstrap, control_plane
        self.certs = certs if certs is not None else (CertificateManager(control_plane, config.trust_domain)
                                                      if control_plane is not None else None)
        self.metrics = Metrics()
        # service.name as Istio names a waypoint's traces: <name>.<namespace>
        self.tracer = Tracer(f"{config.gateway}.{config.namespace}", config.namespace, config.tracing,
                             self.metrics.registry)
        self.view = View((), trust_domain=config.trust_domain, namespace=config.namespace, gateway=config.gateway)
        self.snapshots = 0
        self.released: dict[str, float] = {}   # Service key -> when it stopped using this waypoint
        self.updated = trio.Event()   # set (and replaced) on each snapshot
        if resources is not None:
            self.on_update(resources, 0)
        self.pool: HboneClientPool | None = None
        self.upstream = Upstream(None, config.identity)
        self.pipeline = Pipeline(lambda: self.view, self.upstream, self.metrics, tracer=self.tracer)
        self.draining = trio.Event()
        self.listeners: dict[str, Any] = {}

    # ---- inputs -----------------------------------------------------------------------
    def on_update(self, resources, version) -> None:
        before = self._bound()
        self.view = View(resources, trust_domain=self.config.trust_domain, namespace=self.config.namespace,
                         gateway=self.config.gateway, version=version, previous=self.view)
        now, bound = time.monotonic(), self._bound()
        self.released = {k: t for k, t in self.released.items()
                         if k not in bound and now - t < self.config.config_grace}
        self.released.update((k, now) for k in before - bound)
        self.updated.set()
        self.updated = trio.Event()
        self.snapshots += 1
        self.metrics.config_version.set(version or 0)
        gateway = next((r for r in self.view.resources if r.kind == "Gateway" and r.name == self.config.gateway
                        and r.namespace == self.config.namespace), None)
        self.tracer.configure(gateway.annotations if gateway is not None else {})
        log.info("waypoint %s/%s: applied config version %s (%d services)", self.config.namespace,
                 self.config.gateway, version, len(self.view.state.services))

    def bundle(self) -> CertBundle:
        if self.certs is not None:
            try:
                return self.certs.bundle(self.config.identity)
            except Exception:
                pass
        if self.bootstrap is None:
            raise RuntimeError(f"no certificate for {self.config.identity} yet")
        return self.bootstrap

    def ssl_context_for(self, identity: str, server: bool = False) -> ssl.SSLContext:
        if self.certs is not None:
            try:
                return self.certs.ssl_context_for(identity, server=server)
            except Exception:
                pass
        b = self.bundle()
        return tls.server_context(b, alpn=["h2"]) if server else tls.client_context(b, alpn=["h2"])

    # ---- HBONE in ---------------------------------------------------------------------
    def _bound(self) -> set[str]:
        """The Services that use this waypoint in the current view."""
        c = self.config
        return {s.key for s in self.view.state.services if s.waypoint == c.gateway and s.namespace == c.namespace}

    def target_of(self, host: str, port: int) -> tuple[Target | None, str]:
        t = self.view.target(host, port)
        if t is None:
            return None, f"{host}:{port} is neither a Service port nor a Service endpoint this waypoint knows"
        svc = t.service
        if svc.waypoint != self.config.gateway or svc.namespace != self.config.namespace:
            if time.monotonic() - self.released.get(svc.key, -math.inf) < self.config.config_grace:
                return t, ""   # it left moments ago: callers' ztunnels may not know yet
            return None, (f"Service {svc.key} does not use waypoint {self.config.namespace}/{self.config.gateway} "
                          f"(it uses {svc.waypoint or 'none'})")
        return t, ""

    async def _target_after_catch_up(self, host: str, port: int) -> tuple[Target | None, str]:
        """target_of, waiting up to config_grace for snapshots while it refuses: the caller's
        ztunnel may have had the config that sends this Service here before we did."""
        target, why = self.target_of(host, port)
        with trio.move_on_after(self.config.config_grace):
            while target is None:
                await self.updated.wait()
                target, why = self.target_of(host, port)
        return target, why

    async def handle_tunnel(self, tunnel: InboundTunnel) -> None:
        host, port = tunnel.authority
        target, why = self.target_of(host, port)
        if target is None:
            target, why = await self._target_after_catch_up(host, port)
        if target is None:
            await tunnel.refuse(404, why)
            return
        stream = await tunnel.accept()
        caller = Caller(tunnel.peer_identity, str(tunnel.peer_address[0]))
        await ClientConnection(stream, caller, target, self.pipeline, self.draining).serve()

    async def handle_plain(self, stream: trio.SocketStream) -> None:
        ns, name, port = self.config.standalone_target or self._only_target()
        svc = self.view.service(ns, name)
        if svc is None:
            return
        peer = stream.socket.getpeername()[0]
        try:
            await ClientConnection(stream, Caller(None, peer, security="none"), Target(svc, port), self.pipeline).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _only_target(self) -> tuple[str, str, int]:
        for s in self.view.state.services:
            if s.waypoint == self.config.gateway and s.ports:
                return s.namespace, s.name, s.ports[0].port
        raise RuntimeError("standalone config has no Service using this waypoint")

    # ---- admin ------------------------------------------------------------------------
    def healthz(self) -> dict[str, Any]:
        return {"waypoint": f"{self.config.namespace}/{self.config.gateway}", "identity": self.config.identity,
                "version": self.view.version, "snapshots": self.snapshots,
                "control_plane": ("standalone" if self.cp is None else
                                  "connected" if getattr(self.cp, "connected", False) else "unreachable"),
                "lastError": getattr(self.cp, "last_error", None), "draining": self.draining.is_set()}

    def routes(self) -> dict[str, admin.Handler]:
        def json_route(fn):
            async def handler(_req):
                return admin.Response(fn())
            return handler
        return {"/config_dump": json_route(lambda: {"state": self.view.state.dump(), "routes": self.view.dump_routes(),
                                                    "certs": self.certs.dump() if self.certs else [],
                                                    "upstream": self.upstream.dump(), "health": self.healthz()}),
                "/routes": json_route(lambda: self.view.dump_routes()),
                "/clusters": json_route(lambda: self.view.dump_clusters()),
                "/healthz": json_route(self.healthz)}

    async def _ready(self, _req) -> admin.Response:
        if self.draining.is_set():
            return admin.Response({"ready": False, "why": "draining for shutdown"}, 503)
        if self.snapshots == 0:
            return admin.Response({"ready": False, "why": "waiting for the first config snapshot"}, 503)
        try:
            self.bundle()
        except RuntimeError as exc:
            return admin.Response({"ready": False, "why": str(exc)}, 503)
        return admin.Response({"ready": True, "version": self.view.version})

    async def _metrics(self, _req) -> admin.Response:
        self.metrics.cp_connected.set(1 if getattr(self.cp, "connected", False) else 0)
        return admin.Response(self.metrics.render(), content_type="text/plain; version=0.0.4")

    # ---- run --------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED) -> None:
        c = self.config
        binds = [("admin", c.admin), ("metrics", c.metrics), ("ready", c.ready)]
        self.listeners = {n: await admin.open_listener(*a) for n, a in binds if a is not None}
        if c.standalone_listen:
            self.listeners["plain"] = (await trio.open_tcp_listeners(c.standalone_listen[1],
                                                                     host=c.standalone_listen[0]))[0]
        else:
            self.listeners["hbone"] = (await trio.open_tcp_listeners(c.hbone[1], host=c.hbone[0]))[0]
        routes = {"admin": self.routes(), "metrics": {"/metrics": self._metrics},
                  "ready": {"/healthz/ready": self._ready}}
        async with trio.open_nursery() as nursery:
            self.upstream.nursery = nursery
            nursery.start_soon(self.tracer.run)
            for name in ("admin", "metrics", "ready"):
                if name in self.listeners:
                    await nursery.start(functools.partial(admin.serve_http, "", 0, routes[name],
                                                          listener=self.listeners[name]))
            if handle_signals:
                nursery.start_soon(self._on_signals, nursery.cancel_scope)
            if c.standalone_listen:
                nursery.start_soon(trio.serve_listeners, self.handle_plain, [self.listeners["plain"]])
                task_status.started(self)
                return
            async with HboneClientPool(lambda ident: self.ssl_context_for(ident)) as pool:
                self.pool = self.upstream.hbone = pool
                if self.certs is not None:
                    await nursery.start(self.certs.run)
                    self.certs.want(c.identity)
                if self.cp is not None:
                    nursery.start_soon(keep_watching, self.cp, self.on_update, f"waypoint {c.namespace}/{c.gateway}")
                drained, goaway = trio.Event(), trio.Event()

                async def hbone(task_status=trio.TASK_STATUS_IGNORED):
                    try:
                        await serve_hbone([self.listeners["hbone"]], lambda: self.ssl_context_for(c.identity, server=True),
                                          self.handle_tunnel, drain=goaway, task_status=task_status)
                    finally:
                        drained.set()
                await nursery.start(hbone)
                log.info("waypoint %s/%s up as %s: hbone %s:%d, admin %s:%d", c.namespace, c.gateway, c.identity,
                         *self.listeners["hbone"].socket.getsockname()[:2], *c.admin)
                task_status.started(self)
                await self.draining.wait()
                with trio.move_on_after(c.drain_timeout):
                    await trio.sleep(min(c.drain_grace, c.drain_timeout))
                    goaway.set()
                    await drained.wait()   # every tunnel finished (GOAWAY sent to each connection)
                nursery.cancel_scope.cancel()

    async def _on_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                if self.draining.is_set() or self.config.standalone_listen:
                    scope.cancel()
                    return
                log.info("waypoint: draining for up to %.0fs (accepting for %.0fs more)", self.config.drain_timeout,
                         self.config.drain_grace)
                self.draining.set()


def client_for(config: Config, bootstrap_source, *, token_file: Path | None = None, roots: bytes = b"") -> Any:
    """The control-plane client: subscriber kind waypoint, named "<ns>/<gateway>"; it
    presents the current certificate, or in a cluster sends the pod's token (`token_file`)
    and trusts `roots`."""
    from meshcore.cpclient import ControlPlaneClient
    return ControlPlaneClient(config.control_plane, bootstrap_source, f"{config.namespace}/{config.gateway}",
                              subscriber=watch.WAYPOINT, token_file=token_file, roots=roots,
                              trust_domain=config.trust_domain)
