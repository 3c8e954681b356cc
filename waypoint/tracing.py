"""W3C trace context and one OTLP server span per request (docs/internals.md "waypoint tracing").

Every request gets a span context whatever the configuration: the trace id (and
`tracestate`) of the incoming `traceparent`, or a new trace; a new span id, which is the
parent id the backend sees in the `traceparent` the waypoint sends upstream. When an OTLP
endpoint is configured and the trace is sampled, the finished request becomes a span in a
bounded queue that a background task (`Tracer.run`, in the waypoint's nursery) exports
in batches. The request path only appends to that queue: a full queue drops the span and
counts it, an unreachable collector logs once and counts, nothing ever waits on export.

Where the settings come from, most specific first: the waypoint's Gateway annotations
(`trellis.dev/otlp-endpoint`, `trellis.dev/trace-sampling`, changed at runtime), then
the process (`--otlp-endpoint`, `--trace-sampling`), then the OpenTelemetry SDK's standard
variables (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, *_HEADERS,
*_TIMEOUT, *_PROTOCOL, OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE,
OTEL_BSP_MAX_EXPORT_BATCH_SIZE). Sampling is parent-based, as the SDK's default: a sampled
parent is recorded, an unsampled one is not, and a new trace is sampled with the given
percentage (default 100).
"""
from __future__ import annotations

import collections
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Mapping
from urllib.parse import unquote

import trio
from prometheus_client import CollectorRegistry, Counter

from meshcore.resources.gateway import OTLP_ENDPOINT_ANNOTATION, TRACE_SAMPLING_ANNOTATION

from . import otlp

log = logging.getLogger("trellis.waypoint.tracing")
SCOPE = ("trellis.waypoint", "0.1")
PROTOCOLS = ("http/protobuf",)


@dataclass(frozen=True)
class Settings:
    endpoint: otlp.Endpoint | None = None
    sampling: float = 100.0                        # percent of new traces recorded
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0
    delay: float = 5.0                             # seconds between exports (OTEL_BSP_SCHEDULE_DELAY)
    queue_size: int = 2048
    batch_size: int = 512


def settings_from(env: Mapping[str, str], endpoint: str | None = None, sampling: float | None = None) -> Settings:
    """The process's settings from its flags (`endpoint`: a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT)
    and the standard environment. ValueError names the flag or variable at fault."""
    def pick(*names: str) -> tuple[str, str] | tuple[None, None]:
        for n in names:
            if env.get(n, "").strip():
                return n, env[n].strip()
        return None, None

    def number(name: str, default: float, low: float) -> float:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = low - 1
        if value < low:
            raise ValueError(f"{name}={raw!r}: expected a number >= {low:g}")
        return value

    name, proto = pick("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if proto is not None and proto not in PROTOCOLS:
        raise ValueError(f"{name}={proto!r}: the waypoint exports OTLP over HTTP with protobuf only "
                         f"(http/protobuf, port 4318 on a collector); gRPC is not supported")
    ep = None
    if endpoint:
        ep = _endpoint(endpoint, "--otlp-endpoint", append=True)
    else:
        name, url = pick("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if url:
            ep = _endpoint(url, name, append=False)
        else:
            name, url = pick("OTEL_EXPORTER_OTLP_ENDPOINT")
            ep = _endpoint(url, name, append=True) if url else None
    name, raw_headers = pick("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
    headers = _headers(raw_headers, name) if raw_headers else ()
    timeout_var = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" if env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") else \
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    if sampling is not None and not 0 <= sampling <= 100:
        raise ValueError(f"--trace-sampling {sampling:g}: expected a percentage 0-100")
    return Settings(ep, 100.0 if sampling is None else sampling, headers,
                    number(timeout_var, 10000, 1) / 1000, number("OTEL_BSP_SCHEDULE_DELAY", 5000, 1) / 1000,
                    int(number("OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1)), int(number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1)))


def _endpoint(url: str, what: str, append: bool) -> otlp.Endpoint:
    try:
        return otlp.Endpoint.parse(url, append_path=append)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _headers(raw: str, name: str) -> tuple[tuple[str, str], ...]:
    """The SDK's header list: `key=value,key2=value2`, values percent-encoded."""
    out = []
    for item in filter(None, (x.strip() for x in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name}: {item!r} is not key=value")
        out.append((key.strip().lower(), unquote(value.strip())))
    return tuple(out)


def for_gateway(base: Settings, annotations: Mapping[str, str]) -> Settings:
    """The process's settings overridden by the Gateway's annotations (validated when the
    Gateway was loaded: meshcore.resources.gateway.check_annotations)."""
    out = base
    url = annotations.get(OTLP_ENDPOINT_ANNOTATION)
    if url is not None:
        out = replace(out, endpoint=None if url.strip() == "none" else otlp.Endpoint.parse(url, append_path=True))
    pct = annotations.get(TRACE_SAMPLING_ANNOTATION)
    if pct is not None:
        out = replace(out, sampling=float(pct))
    return out


# ---- what a span says ---------------------------------------------------------------------
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))


def server_span(req, status: int, caller, target, labels: Mapping[str, str], info: Mapping
                ) -> tuple[str, list[tuple[str, otlp.Value]]]:
    """The span's name and attributes: OpenTelemetry's HTTP server conventions, then the
    names Istio's proxies give their span tags (upstream_cluster, upstream_host) and its
    policy attributes (source.principal ...). The name is Istio's, `<service FQDN>:<port>/*`,
    so that traces read the same as from an Istio waypoint."""
    dest = labels.get("destination_service") or f"{target.service.name}.{target.service.namespace}.svc.cluster.local"
    path, _, query = req.target.partition("?")
    host, sep, port = req.authority.rpartition(":")
    if not sep or not port.isdigit():
        host, port = req.authority, ""
    attrs: list[tuple[str, otlp.Value]] = [
        ("http.request.method", req.method if req.method in METHODS else "_OTHER"),
        ("url.scheme", req.scheme), ("url.path", path), ("http.response.status_code", status),
        ("network.protocol.name", "http"), ("network.protocol.version", req.http_version),
        ("server.address", host.strip("[]") or dest), ("server.port", int(port) if port else target.port),
        ("client.address", caller.address),
        ("upstream_cluster", f"inbound-vip|{target.port}|http|{dest}")]
    if req.method not in METHODS:
        attrs.append(("http.request.method_original", req.method))
    if query:
        attrs.append(("url.query", query))
    ua = req.header("user-agent")
    if ua:
        attrs.append(("user_agent.original", ua))
    if status >= 500:
        attrs.append(("error.type", str(status)))
    if req.is_grpc:
        attrs.append(("rpc.system", "grpc"))
    optional = (("upstream_host", info.get("upstream")), ("source.principal", caller.identity),
                ("source.workload", labels.get("source_workload")),
                ("source.namespace", labels.get("source_workload_namespace")),
                ("destination.principal", labels.get("destination_principal")),
                ("destination.workload", labels.get("destination_workload")),
                ("trellis.route", info.get("route")), ("trellis.attempts", info.get("attempts")))
    attrs += [(k, v) for k, v in optional if v not in (None, "", "unknown")]
    return f"{dest}:{target.port}/*", attrs


# ---- span context -------------------------------------------------------------------------
_HEX = frozenset("0123456789abcdef")
_ids = random.Random()


def _hex(s: str, n: int) -> bool:
    return len(s) == n and set(s) <= _HEX and s != "0" * n


class Span:
    """One request's span context (and its start). `traceparent` goes upstream."""
    __slots__ = ("trace_id", "span_id", "parent_id", "flags", "tracestate", "start_ns")

    def __init__(self, trace_id: str, span_id: str, parent_id: str, flags: int, tracestate: str):
        self.trace_id, self.span_id, self.parent_id = trace_id, span_id, parent_id
        self.flags, self.tracestate = flags, tracestate
        self.start_ns = time.time_ns()

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


def child_of(traceparent: str | None, tracestate: str | None, sample_new: float = 100.0,
             rng: random.Random | None = None) -> Span:
    """W3C Trace Context level 1: keep a valid parent's trace id, flags and tracestate; else a
    new trace, sampled with probability sample_new percent. A version above 00 is read by its
    first four fields, as the spec asks; version ff and all-zero ids are invalid."""
    # random, not os.urandom: ids need to be unique, not secret (the OpenTelemetry SDK does
    # the same), and urandom costs a getrandom() system call per id on every request
    r = rng or _ids
    span_id = f"{r.getrandbits(64) or 1:016x}"
    parts = (traceparent or "").strip().split("-")
    if (len(parts) >= 4 and len(parts[0]) == 2 and set(parts[0]) <= _HEX and parts[0] != "ff"
            and (len(parts) == 4 or parts[0] != "00") and _hex(parts[1], 32) and _hex(parts[2], 16)
            and len(parts[3]) == 2 and set(parts[3]) <= _HEX):
        return Span(parts[1], span_id, parts[2], int(parts[3], 16), (tracestate or "").strip())
    sampled = sample_new >= 100 or r.random() * 100 < sample_new
    return Span(f"{r.getrandbits(128) or 1:032x}", span_id, "", 1 if sampled else 0, "")


class Tracer:
    """The waypoint's span source and exporter. `begin` and `end` are what the request path
    calls (both synchronous and cheap); `run` exports in the background."""

    def __init__(self, service_name: str = "waypoint", namespace: str = "", settings: Settings | None = None,
                 registry: CollectorRegistry | None = None, rng: random.Random | None = None):
        self.base = self.settings = settings or Settings()
        self.resource: tuple[tuple[str, otlp.Value], ...] = (
            ("service.name", service_name), ("service.namespace", namespace), ("k8s.namespace.name", namespace),
            ("telemetry.sdk.name", "trellis"), ("telemetry.sdk.language", "python"))
        self.rng = rng or random.Random()
        self.queue: collections.deque[otlp.SpanRecord] = collections.deque()
        self._wake = trio.Event()
        self._failing: str | None = None
        r = registry or CollectorRegistry()
        self.exported = Counter("trellis_waypoint_spans_exported", "Spans the OTLP collector accepted", registry=r)
        self.dropped = Counter("trellis_waypoint_spans_dropped", "Spans not exported (queue_full, export_failed)",
                               ("reason",), registry=r)
        self.export_failures = Counter("trellis_waypoint_span_export_failures",
                                       "OTLP export requests that failed", registry=r)

    @property
    def enabled(self) -> bool:
        return self.settings.endpoint is not None

    def configure(self, annotations: Mapping[str, str]) -> None:
        """A new snapshot: the Gateway's annotations over the process's settings."""
        before = self.settings.endpoint
        try:
            self.settings = for_gateway(self.base, annotations)
        except ValueError as exc:   # validated with the Gateway already; never let a snapshot stop us
            log.warning("waypoint: ignoring the Gateway's tracing annotations: %s", exc)
            self.settings = self.base
        if self.settings.endpoint != before:
            log.info("waypoint: span export %s", f"to {self.settings.endpoint.url}" if self.settings.endpoint
                     else "off")
            self._failing = None

    # ---- the request path -----------------------------------------------------------------
    def begin(self, traceparent: str | None, tracestate: str | None) -> Span:
        return child_of(traceparent, tracestate, self.settings.sampling, self.rng)

    def end(self, span: Span, req, status: int, caller, target, labels: Mapping[str, str], info: Mapping) -> None:
        """The request finished (the pipeline's values): queue its span, never waiting; a full
        queue drops it and counts."""
        if not self.enabled or not span.sampled:
            return
        if len(self.queue) >= self.settings.queue_size:
            self.dropped.labels("queue_full").inc()
            return
        name, attributes = server_span(req, status, caller, target, labels, info)
        remote = otlp.FLAG_HAS_IS_REMOTE | (otlp.FLAG_IS_REMOTE if span.parent_id else 0)
        self.queue.append(otlp.SpanRecord(
            bytes.fromhex(span.trace_id), bytes.fromhex(span.span_id), bytes.fromhex(span.parent_id), name,
            span.start_ns, time.time_ns(), tuple(attributes),
            status=otlp.STATUS_ERROR if status >= 500 else otlp.STATUS_UNSET, trace_state=span.tracestate,
            flags=(span.flags & 0xFF) | remote))
        if len(self.queue) >= self.settings.batch_size:
            self._wake.set()

    # ---- the background side --------------------------------------------------------------
    async def run(self) -> None:
        """Export every `delay` seconds, or as soon as a batch is full; on the way out (the
        waypoint stopping) one last flush, bounded in time."""
        try:
            while True:
                with trio.move_on_after(self.settings.delay):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.flush()

    async def flush(self) -> None:
        while self.queue:
            s = self.settings
            if s.endpoint is None:   # export turned off meanwhile: what was queued goes
                self.queue.clear()
                return
            batch = [self.queue.popleft() for _ in range(min(len(self.queue), s.batch_size))]
            body = otlp.encode_request(self.resource, SCOPE, batch)
            try:
                status = await otlp.post(s.endpoint, body, s.headers, s.timeout)
                if not 200 <= status < 300:
                    raise otlp.ExportFailed(f"the collector answered HTTP {status}")
            except otlp.ExportFailed as exc:
                self.export_failures.inc()
                self.dropped.labels("export_failed").inc(len(batch))
                if self._failing is None:   # once per outage: a dead collector must not flood the log
                    log.warning("waypoint: cannot export spans to %s: %s (dropping them; failures are counted "
                                "in trellis_waypoint_span_export_failures_total)", s.endpoint.url, exc)
                self._failing = str(exc)
                return   # the rest waits for the next round rather than hammering a dead collector
            if self._failing is not None:
                log.info("waypoint: exporting spans to %s again", s.endpoint.url)
                self._failing = None
            self.exported.inc(len(batch))
