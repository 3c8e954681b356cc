"""The hand-written OTLP encoder against the official protobuf definitions, the settings'
precedence and errors, W3C traceparent parsing, and the Gateway's tracing annotations."""
from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan, Status

from meshcore.resources.loader import parse_documents
from waypoint import otlp
from waypoint.tracing import Settings, Tracer, child_of, for_gateway, settings_from


def _decode(body: bytes) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    return req


def _attrs(kvs) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


def test_the_encoding_is_what_the_official_protobuf_decodes():
    span = otlp.SpanRecord(bytes(range(16)), bytes(range(100, 108)), bytes(range(200, 208)), "web:80/*",
                           1_700_000_000_000_000_000, 1_700_000_000_123_456_789,
                           (("s", "é"), ("i", 503), ("neg", -2), ("f", 1.5), ("b", True), ("empty", "")),
                           status=otlp.STATUS_ERROR, status_message="boom", trace_state="k=v",
                           flags=0x01 | otlp.FLAG_HAS_IS_REMOTE | otlp.FLAG_IS_REMOTE)
    root = otlp.SpanRecord(b"\x01" * 16, b"\x02" * 8, b"", "root", 5, 6)
    msg = _decode(otlp.encode_request((("service.name", "waypoint.default"),), ("trellis.waypoint", "0.1"),
                                      [span, root]))
    (rs,) = msg.resource_spans
    assert _attrs(rs.resource.attributes) == {"service.name": "waypoint.default"}
    (ss,) = rs.scope_spans
    assert (ss.scope.name, ss.scope.version) == ("trellis.waypoint", "0.1")
    a, b = ss.spans
    assert (a.trace_id, a.span_id, a.parent_span_id) == (bytes(range(16)), bytes(range(100, 108)), bytes(range(200, 208)))
    assert (a.name, a.kind, a.trace_state) == ("web:80/*", PbSpan.SPAN_KIND_SERVER, "k=v")
    assert (a.start_time_unix_nano, a.end_time_unix_nano) == (1_700_000_000_000_000_000, 1_700_000_000_123_456_789)
    assert _attrs(a.attributes) == {"s": "é", "i": 503, "neg": -2, "f": 1.5, "b": True, "empty": ""}
    assert (a.status.code, a.status.message) == (Status.STATUS_CODE_ERROR, "boom")
    assert a.flags == 0x301
    assert (b.parent_span_id, b.status.code, b.flags, b.name) == (b"", Status.STATUS_CODE_UNSET, 0, "root")


def test_endpoints_base_or_as_is():
    ep = otlp.Endpoint.parse("http://collector:4318", append_path=True)
    assert (ep.host, ep.port, ep.path, ep.authority) == ("collector", 4318, "/v1/traces", "collector:4318")
    assert otlp.Endpoint.parse("http://c:4318/otlp/", append_path=True).path == "/otlp/v1/traces"
    assert otlp.Endpoint.parse("http://c:4318/v1/traces", append_path=True).path == "/v1/traces"
    assert otlp.Endpoint.parse("http://c:4318/custom", append_path=False).path == "/custom"
    https = otlp.Endpoint.parse("https://[::1]/x?tenant=a", append_path=False)
    assert (https.port, https.path, https.authority) == (443, "/x?tenant=a", "[::1]")
    for bad in ("collector:4318", "grpc://c:4317", "http://", "http://c:99999"):
        with pytest.raises(ValueError):
            otlp.Endpoint.parse(bad, append_path=True)


def test_settings_precedence_and_the_sdk_variables():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/p",
           "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%20ecret, X-Tenant=a", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
           "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "3"}
    s = settings_from(env)
    assert s.endpoint.url == "http://t:1/p"   # the signal-specific variable, used as is
    assert s.headers == (("api-key", "s ecret"), ("x-tenant", "a"))
    assert (s.timeout, s.delay, s.queue_size, s.batch_size, s.sampling) == (2.5, 0.2, 10, 3, 100.0)
    assert settings_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318"}).endpoint.url == "http://base:4318/v1/traces"
    assert settings_from(env, "http://flag:4318", 5).endpoint.url == "http://flag:4318/v1/traces"
    assert settings_from(env, "http://flag:4318", 5).sampling == 5
    assert settings_from({}).endpoint is None


@pytest.mark.parametrize("env, flag, sampling, named", [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None, None, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, None, None, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({}, "ftp://x", None, "--otlp-endpoint"),
    ({}, None, 101.0, "--trace-sampling"),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "lots"}, None, None, "OTEL_BSP_MAX_QUEUE_SIZE='lots'"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, None, None, "OTEL_EXPORTER_OTLP_HEADERS"),
])
def test_bad_settings_name_the_flag_or_variable(env, flag, sampling, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[")):
        settings_from(env, flag, sampling)


def test_the_gateway_annotations_override_the_process():
    base = settings_from({}, "http://process:4318", 50)
    s = for_gateway(base, {"trellis.dev/otlp-endpoint": "http://gw:4318", "trellis.dev/trace-sampling": "1"})
    assert (s.endpoint.url, s.sampling) == ("http://gw:4318/v1/traces", 1.0)
    assert for_gateway(base, {"trellis.dev/otlp-endpoint": "none"}).endpoint is None
    assert for_gateway(base, {}) == base


def test_traceparent_parent_kept_or_a_new_trace():
    tid, pid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    s = child_of(f"00-{tid}-{pid}-01", "vendor=x")
    assert (s.trace_id, s.parent_id, s.flags, s.tracestate) == (tid, pid, 1, "vendor=x")
    assert s.span_id != pid and len(s.span_id) == 16 and s.traceparent == f"00-{tid}-{s.span_id}-01"
    assert not child_of(f"00-{tid}-{pid}-00", None).sampled      # the parent's decision holds
    future = child_of(f"cc-{tid}-{pid}-01-more", None)            # a later version: its first four fields
    assert (future.trace_id, future.parent_id, future.traceparent[:2]) == (tid, pid, "00")
    for bad in (None, "", f"ff-{tid}-{pid}-01", f"00-{'0' * 32}-{pid}-01", f"00-{tid}-{'0' * 16}-01",
                f"00-{tid.upper()}-{pid}-01", f"00-{tid}-{pid}-01-extra", f"00-{tid[:-1]}-{pid}-01", "garbage"):
        new = child_of(bad, "vendor=x")
        assert new.trace_id != tid and new.parent_id == "" and new.tracestate == "" and new.sampled, bad


def test_new_traces_are_sampled_at_the_given_percentage():
    rng = random.Random(7)
    kept = sum(child_of(None, None, 10, rng).sampled for _ in range(2000))
    assert 140 < kept < 260          # binomial(2000, 0.1): mean 200, sd 13.4
    assert not any(child_of(None, None, 0, rng).sampled for _ in range(100))


def test_a_full_queue_drops_and_counts_without_waiting():
    from prometheus_client import CollectorRegistry
    from meshcore.telemetry import sample_total
    from waypoint.http.events import Request
    from waypoint.pipeline import Caller

    reg = CollectorRegistry()
    t = Tracer("w.ns", "ns", Settings(otlp.Endpoint.parse("http://127.0.0.1:9", append_path=True), queue_size=2),
               reg)
    svc = type("Svc", (), {"name": "web", "namespace": "ns"})()
    target = type("T", (), {"service": svc, "port": 80})()
    for _ in range(5):
        span = t.begin(None, None)
        t.end(span, Request("GET", "/", "web"), 200, Caller(None, "10.0.0.1"), target, {}, {})
    assert len(t.queue) == 2
    assert sample_total(reg, "trellis_waypoint_spans_dropped_total", reason="queue_full") == 3


GATEWAY = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default, annotations: %s}
spec: {gatewayClassName: trellis-waypoint}
"""


def test_bad_tracing_annotations_name_the_file_object_and_field():
    ok = parse_documents(GATEWAY % '{trellis.dev/otlp-endpoint: "http://c:4318", trellis.dev/trace-sampling: "2.5"}',
                         "gw.yaml")
    assert not ok.errors
    bad = parse_documents(GATEWAY % '{trellis.dev/otlp-endpoint: "c:4318", trellis.dev/trace-sampling: "all"}',
                          "gw.yaml")
    text = "\n".join(str(e) for e in bad.errors)
    assert "gw.yaml" in text and "waypoint" in text
    assert "metadata.annotations.trellis.dev/otlp-endpoint" in text and "'c:4318'" in text
    assert "metadata.annotations.trellis.dev/trace-sampling" in text and "'all'" in text


def test_a_bad_annotation_at_runtime_keeps_the_process_settings(caplog):
    base = settings_from({}, "http://process:4318")
    t = Tracer("w.ns", "ns", base)
    t.configure({"trellis.dev/otlp-endpoint": "http://gw:4318"})
    assert t.settings.endpoint.url == "http://gw:4318/v1/traces"
    t.configure({"trellis.dev/otlp-endpoint": "not a url", "trellis.dev/trace-sampling": "5"})
    assert t.settings == base and "ignoring the Gateway's tracing annotations" in caplog.text


def test_the_readme_tracing_example_is_a_valid_gateway():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("#### Tracing: one OTLP span per request", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    res = parse_documents(block, "README.md")
    assert res.errors == [], res.errors
    (gw,) = res.resources
    s = for_gateway(Settings(), gw.annotations)
    assert (s.endpoint.url, s.sampling) == ("http://otel-collector.observability:4318/v1/traces", 10.0)
