"""One HTTP request through the waypoint, in Istio's order:

path normalisation (400) -> authorization (403) -> routing (redirects, 404/500) ->
rate limits (429) -> connection-pool limits (503) -> load balancing and outlier
detection -> upstream attempts with timeouts (504) and retries under the budget ->
response header filters -> response (streamed), then metrics and one access-log line.

The caller hands the request head, its body as a `body.RequestBody` (streamed: whatever the
client already sent goes with the head in one write; the rest is pumped by a task per
attempt, kept for a retry up to the replay bound) and a `send(event)` coroutine for the answer.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import trio

from meshcore import authz
from meshcore.telemetry import source_labels

from .body import BodyError, RequestBody
from .exchange import Send, adding_headers, outgoing, response_head, scope, trio_deadline
from .fast1 import FastPath
from .filters.normalize import PathRejected, normalize_target
from .filters.pool import QUEUE, REJECT
from .filters.retry import ATTEMPT_TIMEOUT, RetryState
from .filters.timeouts import Deadlines
from .http.events import Data, EndOfMessage, Request, Response, end_to_end, simple_response
from .metrics import Metrics, access_log, log_request
from .routing import Backend
from .tracing import Tracer
from .upstream import PUMP_ERRORS, AttemptFailed, Backend1, Upstream
from .view import Target, View


@dataclass
class Caller:
    identity: str | None
    address: str
    protocol: str = "http"          # Istio's request_protocol: http | grpc
    security: str = "mutual_tls"    # connection_security_policy
    # id(target) -> (view, the request labels that stay the same on this connection, target): built once per snapshot
    labels: dict = field(default_factory=dict, repr=False, compare=False)


class Pipeline:
    def __init__(self, view_of: Callable[[], View], upstream: Upstream, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic, tracer: Tracer | None = None):
        self.view_of, self.upstream, self.metrics, self.clock = view_of, upstream, metrics, clock
        self.tracer = tracer or Tracer()
        self._queued: dict[int, trio.Event] = {}
        self._dest_view: View | None = None
        self._dests: dict[tuple[str, str], tuple] = {}   # for _dest_view: (ns, name) -> _destination()
        self._endpoint_facts: dict = {}   # Endpoint -> (str, destination_workload, its namespace, principal)
        self.fast = FastPath(self)   # the common HTTP/1.1 request, lean (conn.py asks it first)

    async def handle(self, req: Request, body: RequestBody, caller: Caller, target: Target, send: Send) -> int:
        start = self.clock()
        view = self.view_of()
        labels = dict(self.base_labels(view, caller, target), request_protocol="grpc" if req.is_grpc else caller.protocol)
        span = self.tracer.begin(req.header("traceparent"), req.header("tracestate"))
        info: dict = {"traceparent": span.traceparent}
        status = await self._run(view, req, body, caller, target, send, labels, info)
        return self.finish(start, req, caller, target, labels, info, span, status)

    def base_labels(self, view: View, caller: Caller, target: Target) -> dict:
        """The request labels that stay the same on a connection, built once per snapshot."""
        # by identity: a connection keeps its Target object, and hashing one hashes its whole Service
        cached = caller.labels.get(id(target))
        if cached is not None and cached[0] is view and cached[2] is target:
            return cached[1]
        svc = target.service   # first request to target on this connection, or a new snapshot (the old one is let go)
        base = dict(
            source_labels(caller.identity, caller.address, view.state), reporter="waypoint",
            destination_service=f"{svc.name}.{svc.namespace}.svc.cluster.local",
            destination_service_name=svc.name, destination_service_namespace=svc.namespace,
            connection_security_policy=caller.security)
        caller.labels[id(target)] = (view, base, target)
        return base

    def finish(self, start: float, req: Request, caller: Caller, target: Target, labels: dict, info: dict, span,
               status: int) -> int:
        """After the answer: metrics, the access log line, the span."""
        info.pop("_status", None)
        labels["response_code"] = str(status)
        millis = (self.clock() - start) * 1000
        self.metrics.request_done(labels, millis)
        if access_log.isEnabledFor(logging.INFO):
            log_request(reporter="waypoint", method=req.method, path=req.target, authority=req.authority,
                        status=status, duration_ms=round(millis, 1), src=caller.address,
                        **{"src.identity": caller.identity, "dst.service": target.service.key}, **info)
        self.tracer.end(span, req, status, caller, target, labels, info)
        return status

    async def _respond(self, send: Send, status: int, body: str, extra=()) -> int:
        resp, data, end = simple_response(status, body, tuple(extra))
        await send(resp, True)
        await send(data, True)
        await send(end)
        return status

    async def _run(self, view: View, req: Request, body: RequestBody, caller: Caller, target: Target, send: Send,
                   labels: dict, info: dict) -> int:
        svc = target.service
        try:
            normal = normalize_target(req.target)
            if normal != req.target:
                req = req.with_(target=normal)
        except PathRejected as exc:
            return await self._respond(send, exc.status, exc.message)
        policies = view.target_policies(target)
        verdict = authz.evaluate(policies, caller.identity, target.port,
                                 authz.Request(req.method, req.target, req.authority, req.headers),
                                 source_ip=caller.address,   # the client pod's: its ztunnel dials from it
                                 destination_ip=target.workload.address if target.workload else svc.cluster_ip
                                 ) if policies else None
        if verdict is not None and verdict.audit:   # AUDIT: the access-log line says which policies matched
            info["audit"] = ",".join(verdict.audit)
        if isinstance(verdict, authz.Deny):   # no policy at all: allowed (evaluate's "no ALLOW policy applies")
            self.metrics.authz_denied.labels(svc.key, verdict.policy or "").inc()
            info["authz"] = verdict.reason
            return await self._respond(send, 403, f"RBAC: access denied ({verdict.reason})")
        if target.workload is not None:   # a pod behind the Service, dialled directly: policies, no routes
            decision = None
            backend = Backend(svc.namespace, svc.name, target.port)
        else:
            decision = view.routes.decide(req, svc.namespace, svc.name, target.port,
                                          (labels.get("source_workload_namespace") or ""))
            info["route"] = str(decision.route) if decision.route else None
            if decision.action == "redirect":
                return await self._respond(send, decision.status, "redirect",
                                           (("location", decision.location or "/"),))
            if decision.action == "respond":
                return await self._respond(send, decision.status, decision.reason)
            req = decision.request
            backend = decision.backend or Backend(svc.namespace, svc.name, target.port)
        return await self.forward(view, req, body, caller, target, send, labels, info, decision, backend)

    async def forward(self, view: View, req: Request, body: RequestBody, caller: Caller, target: Target, send: Send,
                      labels: dict, info: dict, decision, backend: Backend) -> int:
        """Routed (or a pod dialled directly): rate limits, pool limits, then the attempts."""
        svc = target.service
        limit_headers: tuple = ()
        for lim in view.limiters(svc, decision.route if decision else None):
            rl = lim.check(caller.identity)
            if not rl.allowed:
                self.metrics.rate_limited.labels(svc.key, lim.name).inc()
                return await self._respond(send, rl.status, rl.body, rl.headers)
            limit_headers += rl.headers
        if limit_headers:   # admitted answers carry the quota too (the IETF draft), so a client can pace itself
            send = adding_headers(send, limit_headers)
        found = self._destination(view, backend.namespace, backend.name)
        if found is None:
            return await self._respond(send, 500, f"backend Service {backend.namespace}/{backend.name} does not exist")
        dest, cluster, labels["destination_service"] = found
        labels["destination_service_name"], labels["destination_service_namespace"] = dest.name, dest.namespace
        admission = cluster.pool.acquire()
        if admission.outcome == REJECT:
            self.metrics.overflows.labels(dest.key).inc()
            return await self._respond(send, 503, admission.body)
        try:
            if admission.outcome == QUEUE:
                ev = self._queued[admission.ticket] = trio.Event()
                try:
                    await ev.wait()
                except BaseException:
                    cluster.pool.abandon(admission.ticket)
                    raise
                finally:
                    self._queued.pop(admission.ticket, None)
            return await self._attempts(view, req, body, target, backend, cluster, decision, send, labels, info)
        finally:
            handed = cluster.pool.release()
            if handed is not None and handed in self._queued:
                self._queued[handed].set()

    def _destination(self, view: View, namespace: str, name: str):
        """(Service, its Cluster, its FQDN label) for a backend, looked up once per snapshot."""
        if self._dest_view is not view:
            self._dest_view, self._dests = view, {}
        found = self._dests.get((namespace, name))
        if found is None:
            dest = view.service(namespace, name)
            if dest is None:
                return None
            found = self._dests[(namespace, name)] = (dest, view.cluster(namespace, name),
                                                      f"{dest.name}.{dest.namespace}.svc.cluster.local")
        return found

    async def _attempts(self, view, req, body: RequestBody, target, backend, cluster, decision, send, labels,
                        info) -> int:
        # body.replay: what a retry can send again (RetryState refuses once it overflowed)
        retry = RetryState(decision.retry if decision else None, cluster.budget, view.rng, body.replay)
        deadlines = Deadlines.of(decision.timeouts if decision else None, self.clock())
        if body.poll():   # all here already: it leaves with the head, no pump task
            return await self._attempt_loop(view, outgoing(req, body, info["traceparent"]), body, target, backend, cluster,
                                            decision, send, labels, info, retry, deadlines, None)
        await body.begin()
        out = outgoing(req, body, info["traceparent"])
        status = failed = None
        async with trio.open_nursery() as nursery:
            def spawn(conn) -> None:
                nursery.start_soon(self._pump, conn, body.cursor(), body, nursery.cancel_scope)
            try:
                status = await self._attempt_loop(view, out, body, target, backend, cluster, decision, send, labels,
                                                  info, retry, deadlines, spawn)
            except Exception as exc:   # raised as itself below, not wrapped in the nursery's ExceptionGroup
                failed = exc
            finally:
                nursery.cancel_scope.cancel()   # the response is over: a body still coming is not wanted
        if failed is not None:
            raise failed
        if status is not None:
            return status
        # the pump cancelled the request: the client's body failed
        err = body.error or BodyError(400, "request body failed")
        info["error"] = err.message
        if "_status" in info:   # the response started: it can only be cut short
            return info.pop("_status")
        return await self._respond(send, err.status, err.message)

    async def _pump(self, conn, cursor, body: RequestBody, request_scope: trio.CancelScope) -> None:
        """One attempt's request body, client -> backend, a chunk at a time (backpressure both ways)."""
        with conn.pump_scope:
            try:
                while (chunk := await cursor.next()) is not None:
                    await conn.send_data(chunk)
                await conn.send_end(body.trailers)
            except BodyError as exc:
                body.error = exc
                request_scope.cancel()
            except PUMP_ERRORS:
                conn.broken = True   # the backend stopped reading: its answer, if any, still comes back

    async def _attempt_loop(self, view, out, body, target, backend, cluster, decision, send, labels, info, retry,
                            deadlines, spawn, first=None) -> int:
        """Attempts until one answers or retries end. `first`: (endpoint, endpoints, conn, response,
        failure) of an attempt already made (fast1.py's), whose outcome this takes up."""
        info.setdefault("attempts", 0)
        while True:
            if first is None:
                made = await self._attempt(view, out, body, target, backend, cluster, send, labels, info, deadlines,
                                           spawn)
                if type(made) is int:   # answered: no endpoint to try
                    return made
                ep, eps, conn, resp, failure = made
            else:
                (ep, eps, conn, resp, failure), first = first, None
            status = grpc_status = None
            if resp is not None:
                status = resp.status
                gs = resp.header("grpc-status")
                grpc_status = int(gs) if gs and gs.isdigit() else None
            if cluster.finished(ep, status=status, connect_failure=failure is not None and failure != ATTEMPT_TIMEOUT,
                                pool=eps):
                self.metrics.ejections.labels(cluster.service).inc()
            verdict = retry.outcome(status=status, failure=failure, grpc_status=grpc_status,
                                    time_left=deadlines.time_left(self.clock()))
            if verdict.retry:
                self.metrics.retries.labels(cluster.service, verdict.why).inc()
                if conn is not None:
                    await conn.aclose()
                await trio.sleep(verdict.delay)
                continue
            if "budget" in verdict.why:
                self.metrics.retry_budget_exhausted.labels(cluster.service).inc()
            if resp is None:
                if failure == ATTEMPT_TIMEOUT:
                    body_text = (deadlines.timeout_body() if deadlines.expired(self.clock()) or
                                 deadlines.backend_request is None else deadlines.attempt_timeout_body())
                    return await self._respond(send, 504, body_text)
                return await self._respond(send, 503, f"upstream connect error or disconnect/reset before headers: "
                                                      f"{info.get('error')}")
            info["_status"] = resp.status   # taken out before the access log
            return await self._relay(conn, resp, decision, send, deadlines)

    async def _attempt(self, view, out, body, target, backend, cluster, send, labels, info, deadlines, spawn):
        """One attempt on an endpoint the balancer picks: (endpoint, endpoints, conn, response,
        failure), or the status of the answer when there is no endpoint to try."""
        if target.workload is not None:
            eps = [view.endpoint_of(target.workload, target.workload_port)]
        else:
            eps = view.endpoints(backend)
        if not eps:
            return await self._respond(send, 503, f"no healthy upstream: Service {backend.namespace}/"
                                                  f"{backend.name} port {backend.port} has no endpoints")
        ep = cluster.pick(eps)
        if ep is None:
            return await self._respond(send, 503, "no healthy upstream: every endpoint is ejected")
        info["attempts"] += 1
        self.endpoint_labels(ep, labels, info)
        cluster.started(ep)
        failure = conn = resp = None
        with scope(trio_deadline(deadlines.attempt_deadline(self.clock()), self.clock)) as sc:
            try:
                conn, resp = await self.upstream.start(ep, out, body, spawn)
            except AttemptFailed as exc:
                failure, info["error"] = exc.failure, str(exc)
        if sc.cancelled_caught:
            failure = ATTEMPT_TIMEOUT
            if conn is not None:
                await conn.aclose()
                conn = resp = None
        return ep, eps, conn, resp, failure

    def endpoint_labels(self, ep, labels: dict, info: dict) -> None:
        """The attempt's endpoint in the labels and the access log."""
        facts = self._endpoint_facts.get(ep)
        if facts is None:   # once per endpoint: its address and labels (a View's endpoints are kept per snapshot)
            if len(self._endpoint_facts) >= 4096:
                self._endpoint_facts.clear()
            wl_ns, _, wl_name = ep.workload.partition("/")
            facts = self._endpoint_facts[ep] = (str(ep), wl_name or "unknown", wl_ns or "unknown",
                                                ep.identity or "unknown")
        info["upstream"] = facts[0]
        labels["destination_workload"], labels["destination_workload_namespace"] = facts[1], facts[2]
        labels["destination_principal"] = facts[3]

    async def _relay(self, conn, resp: Response, decision, send: Send, deadlines: Deadlines) -> int:
        head = response_head(resp, end_to_end(resp.headers), decision)
        # `more` while the backend's bytes already read hold further events: a small response
        # leaves in one write instead of one per event
        await send(head, conn.buffered())
        try:
            # the whole response already read (a small one nearly always is): nothing to wait
            # for from the backend, so no deadline scope (entering one costs more than the relay)
            pending = conn._pending if type(conn) is Backend1 else None   # HTTP/1.1: its parsed, untaken events
            if pending and isinstance(pending[-1], EndOfMessage):
                while True:   # Data..., EndOfMessage: taken as conn.events() would, without the generator
                    ev = pending.popleft()
                    if isinstance(ev, EndOfMessage):
                        await send(ev)
                        break
                    await send(ev, True)
            else:
                with scope(trio_deadline(deadlines.request_deadline, self.clock)) as sc:
                    async for ev in conn.events():
                        if isinstance(ev, Data):
                            await send(ev, conn.buffered())
                        elif isinstance(ev, EndOfMessage):
                            await send(ev)
                if sc.cancelled_caught:
                    raise trio.TooSlowError("the request timeout passed while the response was relayed")
            await self.upstream.release(conn)
        except BaseException:
            await conn.aclose()
            raise
        return resp.status
