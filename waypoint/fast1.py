"""The common HTTP/1.1 request, lean: what most requests through a waypoint are (no body or an
empty one, a route without authorization or rate-limit policies, a plaintext HTTP/1.1
backend with a kept-alive connection, a small answer) takes this path instead of the
general pipeline's layers, with the same results: the same routing decision, retry budget
deposit, load balancing and outlier accounting, upstream request bytes, response, metrics,
access log line and span (tests/waypoint/test_fast_path.py runs both ways and compares).

What makes it cheaper: no request-body objects, no RetryState or Deadlines unless a retry is
possible, one coroutine for the exchange instead of five, and no trio cancel scope for the
attempt's timeout: the wait on the backend socket is bounded by an `alarms.Alarm` (a
deadline on a queue that one task per run watches) instead of a CancelScope whose deadline
is registered and removed per request.

Anything else goes to the general pipeline, either before anything happened (`handle`
returns None: authorization policies, a path that normalisation changes, gRPC, redirects
and direct answers) or from the point reached: rate limits and pool limits
(`Pipeline.forward`), an HBONE or HTTP/2 endpoint, a retry after the first attempt
(`Pipeline._attempt_loop` takes its outcome up), a response still streaming (`_relay`).
"""
from __future__ import annotations

import trio

from meshcore.hbone import HboneError

from .alarms import ALARMS
from .body import RequestBody
from .exchange import forwarded_fields, response_head, scope
from .fastio import RawSocket
from .filters.normalize import PathRejected, normalize_target
from .filters.retry import ATTEMPT_TIMEOUT, GRPC_RETRYABLE, ISTIO_DEFAULT, RESET_BEFORE_RESPONSE, RetryState
from .filters.timeouts import Deadlines
from .http.events import EndOfMessage, ProtocolError, Response, end_to_end
from .routing import Backend
from .upstream import IDLE_TIMEOUT, READ_SIZE, AttemptFailed, Backend1

_RESETS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, HboneError)
_END = EndOfMessage()
_WITH_LENGTH = ("POST", "PUT", "PATCH")   # an empty body still gets content-length: 0 (as pipeline.outgoing)


class FastPath:
    def __init__(self, pipeline):
        self.p = pipeline
        self._plain_view = None
        self._plain: dict[int, bool] = {}   # id(a View's endpoint list) -> all plaintext HTTP/1.1

    async def handle(self, cc, req) -> int | None:
        """Serve `req` (its EndOfMessage is next in cc.events) and return its status, or None
        when it is the general pipeline's (nothing happened yet)."""
        p = self.p
        start = p.clock()
        view = p.view_of()
        target = cc.target
        if cc.fast_view is not view:   # once per snapshot and connection
            base = p.base_labels(view, cc.caller, target)
            cc.fast_view, cc.fast_base = view, base
            cc.fast_ok = target.workload is None and not view.target_policies(target)
            cc.fast_src_ns = base.get("source_workload_namespace") or ""
        if not cc.fast_ok or req.is_grpc:
            return None
        try:
            if normalize_target(req.target) is not req.target:
                return None
        except PathRejected:
            return None
        svc = target.service
        decision = view.routes.decide(req, svc.namespace, svc.name, target.port, cc.fast_src_ns)
        if decision.action != "forward" and decision.action != "default":
            return None
        cc.events.popleft()   # the request's EndOfMessage: the request is ours from here
        labels = dict(cc.fast_base, request_protocol=cc.caller.protocol)
        span = p.tracer.begin(req.header("traceparent"), req.header("tracestate"))
        info = {"traceparent": span.traceparent, "route": str(decision.route) if decision.route else None}
        status = await self._forward(cc, view, decision, labels, info)
        return p.finish(start, req, cc.caller, target, labels, info, span, status)

    async def _forward(self, cc, view, decision, labels: dict, info: dict) -> int:
        p, target = self.p, cc.target
        svc = target.service
        req = decision.request
        backend = decision.backend or Backend(svc.namespace, svc.name, target.port)
        found = None if view.limiters(svc, decision.route) else p._destination(view, backend.namespace, backend.name)
        eps = view.endpoints(backend) if found is not None and not found[1].pool._limited else None
        if not eps or not self._plain_http1(view, eps):
            return await p.forward(view, req, RequestBody(), cc.caller, target, cc._send, labels, info, decision,
                                   backend)
        dest, cluster, labels["destination_service"] = found
        labels["destination_service_name"], labels["destination_service_namespace"] = dest.name, dest.namespace
        pool = cluster.pool
        pool.acquire()   # no limits: admitted at once
        try:
            return await self._attempt(cc, view, req, backend, cluster, decision, labels, info, eps)
        finally:
            handed = pool.release()
            if handed is not None and handed in p._queued:
                p._queued[handed].set()

    def _plain_http1(self, view, eps) -> bool:
        """Every endpoint is reached over plaintext TCP with HTTP/1.1 (per snapshot)."""
        if self._plain_view is not view:
            self._plain_view, self._plain = view, {}
        ok = self._plain.get(id(eps))
        if ok is None:
            hbone = self.p.upstream.hbone
            ok = self._plain[id(eps)] = all((ep.identity is None or hbone is None) and ep.http_version != "2"
                                            for ep in eps)
        return ok

    async def _attempt(self, cc, view, req, backend, cluster, decision, labels: dict, info: dict, eps) -> int:
        p = self.p
        up = p.upstream
        cluster.budget.record_request()   # what RetryState would deposit
        started = p.clock()               # Deadlines' start
        length = _attempt_length(decision.timeouts)
        deadline = trio.current_time() + length if length is not None else float("inf")
        headers = forwarded_fields(req.headers) + (("traceparent", info["traceparent"]),)
        if req.method in _WITH_LENGTH:
            headers += (("content-length", "0"),)
        out = req.trusted(headers=headers)
        ep = cluster.pick(eps)
        if ep is None:
            return await self._general(cc, view, out, backend, cluster, decision, labels, info, started, None)
        info["attempts"] = 1
        p.endpoint_labels(ep, labels, info)
        cluster.started(ep)
        conn = resp = failure = None
        idle = up.idle.get(ep)
        while idle:   # Upstream.connection's reuse, inline
            c = idle.pop()
            if up.clock() - c.idle_since < IDLE_TIMEOUT and type(c.io) is RawSocket:
                c.reused, conn = True, c
                break
            await c.aclose()
        if conn is not None:
            resp, failure = await self._exchange(conn, conn.h1.send(out) + conn.h1.send(_END), deadline, length)
            if resp is None:
                await conn.aclose()
                conn = None
                if failure != ATTEMPT_TIMEOUT:   # the backend had closed the idle connection: a new one at once
                    up.stale += 1
                    failure = None
        if conn is None and failure is None:   # a new connection, as Upstream.start1 makes it
            with scope(deadline) as sc:
                try:
                    conn = Backend1(await up._open(ep), ep)
                    up.opened += 1
                    resp = await up._exchange(conn, out, RequestBody(), None)
                except AttemptFailed as exc:
                    conn, failure, info["error"] = None, exc.failure, str(exc)
            if sc.cancelled_caught:
                failure = ATTEMPT_TIMEOUT
                if conn is not None:
                    await conn.aclose()
                    conn = resp = None
        pending = conn._pending if conn is not None else None
        if resp is not None and pending and type(pending[-1]) is EndOfMessage and not _draining(cc):
            status = resp.status
            gs = resp.header("grpc-status")
            grpc_status = int(gs) if gs and gs.isdigit() else None
            if status not in (decision.retry or ISTIO_DEFAULT).codes and grpc_status not in GRPC_RETRYABLE:
                return await self._relay(cc, conn, resp, decision, cluster, ep, eps)
        return await self._general(cc, view, out, backend, cluster, decision, labels, info, started,
                                   (ep, eps, conn, resp, failure))

    async def _exchange(self, conn: Backend1, data: bytes, deadline: float, length: float | None):
        """The request's bytes out on a kept-alive connection and the final response head in:
        (Response, None), or (None, failure) with the connection to be closed."""
        io = conn.io
        alarm = ALARMS.set(deadline, io.sock.fileno(), length) if length is not None else None
        try:
            await io.send_all(data)
            pending, h1 = conn._pending, conn.h1
            while True:
                while not pending:
                    if conn._eof:
                        return None, RESET_BEFORE_RESPONSE
                    got = await io.receive_some(READ_SIZE)
                    conn._eof = not got
                    h1.receive_data(got)
                    pending.extend(h1.events())
                ev = pending.popleft()
                if type(ev) is ProtocolError:
                    return None, RESET_BEFORE_RESPONSE
                if type(ev) is Response and ev.status >= 200:
                    return ev, None
        except _RESETS:
            if alarm is not None and alarm.fired:
                return None, ATTEMPT_TIMEOUT
            return None, RESET_BEFORE_RESPONSE
        finally:
            if alarm is not None:
                alarm.done = True
                if alarm.fired:   # due just as the answer came: trio forgot the fd, so the connection goes
                    conn.broken = True

    async def _relay(self, cc, conn: Backend1, resp: Response, decision, cluster, ep, eps) -> int:
        """A whole response already read: outlier accounting, then one write to the client."""
        if cluster.finished(ep, status=resp.status, pool=eps):
            self.p.metrics.ejections.labels(cluster.service).inc()
        http = cc.sc.http
        out = http.send(response_head(resp, end_to_end(resp.headers), decision))
        pending = conn._pending
        try:
            while True:   # Data..., EndOfMessage
                ev = pending.popleft()
                out += http.send(ev)
                if type(ev) is EndOfMessage:
                    break
            await cc.io.send_all(out)
            await self.p.upstream.release(conn)
        except BaseException:
            await conn.aclose()
            raise
        return resp.status

    async def _general(self, cc, view, out, backend, cluster, decision, labels, info, started, first) -> int:
        """The general retry loop from here, with this request's retry state and deadlines."""
        body = RequestBody()
        retry = RetryState(decision.retry, cluster.budget, view.rng, body.replay, record=False)
        deadlines = Deadlines.of(decision.timeouts, started)
        return await self.p._attempt_loop(view, out, body, cc.target, backend, cluster, decision, cc._send, labels,
                                          info, retry, deadlines, None, first=first)


def _attempt_length(timeouts) -> float | None:
    """Seconds an attempt may wait (Deadlines.attempt_deadline at the request's start): the
    route's backendRequest or request timeout, the shorter; None: no limit."""
    if timeouts is None:
        return None
    request, backend = timeouts.request or None, timeouts.backend_request or None
    if backend is not None and (request is None or backend <= request):
        return backend
    return request


def _draining(cc) -> bool:
    return cc.draining is not None and cc.draining.is_set()

