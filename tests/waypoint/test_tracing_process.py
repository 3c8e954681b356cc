"""Spans over OTLP/HTTP from a real waypoint: `python -m waypoint` as a process (and the
in-process waypoint behind real HBONE for identities), curl and http.client as clients, a
real HTTP receiver on loopback as the collector, decoded with the official
opentelemetry-proto package."""
from __future__ import annotations

import http.client
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from waypoint.tracing import Settings
from wp_process import NAMESPACE, SLEEP_ID, WEB_ID, acurl, backend, curl, mesh, resources, service, workload

OK_ADDR, DOWN_ADDR, MESH_ADDR = "127.0.0.41", "127.0.0.42", "127.0.0.43"
TID, PID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP receiver: records each POST and answers 200 (an empty ExportTraceServiceResponse)."""

    def __init__(self):
        posts = self.posts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                posts.append((self.path, self.headers["content-type"], body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[tuple[dict, Span]]:
        """(resource attributes, span) for every span received so far."""
        out = []
        for path, ctype, body in list(self.posts):
            assert (path, ctype) == ("/v1/traces", "application/x-protobuf")
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    assert ss.scope.name == "trellis.waypoint"
                    out += [(attrs(rs.resource.attributes), s) for s in ss.spans]
        return out

    def wait_for(self, n: int, timeout: float = 20) -> list[tuple[dict, Span]]:
        deadline = time.monotonic() + timeout
        while len(found := self.spans()) < n:
            assert time.monotonic() < deadline, f"{len(found)} of {n} spans arrived"
            time.sleep(0.05)
        return found

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def attrs(kvs) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /broken}}]
    backendRefs: [{name: broken, port: 80}]
    retry: {attempts: 1, codes: [503], backoff: 10ms}
  - backendRefs: [{name: web, port: 80}]
"""


def start_waypoint(tmp_path, ok_port: int, down_port: int, *args: str, env: dict | None = None):
    cfg = tmp_path / "wp.yaml"
    cfg.write_text(service("web", "10.96.0.10", ok_port, "ok") + service("broken", "10.96.0.11", down_port, "down",
                                                                         waypoint=False)
                   + workload("ok", OK_ADDR, "ok") + workload("down", DOWN_ADDR, "down") + CONFIG)
    port, metrics = free_port(), free_port()
    log = open(tmp_path / "wp.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "waypoint", "--standalone-config", str(cfg), "--listen",
                             f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{free_port()}", "--metrics",
                             f"127.0.0.1:{metrics}", *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100", **(env or {})})
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, (tmp_path / "wp.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port, metrics
        except OSError:
            assert time.monotonic() < deadline, "the waypoint did not listen within 20 s"
            time.sleep(0.05)


def stop(proc):
    proc.terminate()
    proc.wait(timeout=15)


def test_one_server_span_per_request_with_the_propagated_ids(tmp_path):
    ok, down, collector = backend(OK_ADDR, "ok"), backend(DOWN_ADDR, "down", "down"), Collector()
    proc, port, _ = start_waypoint(tmp_path, ok.server_address[1], down.server_address[1],
                                   "--otlp-endpoint", collector.url)
    try:
        # a parent that did not sample: propagated as such, never exported
        unsampled = curl("-H", f"traceparent: 00-{'a' * 32}-{PID}-00", f"http://127.0.0.1:{port}/quiet")
        assert unsampled.stdout == "ok\n" and ok.seen[-1][2]["traceparent"].endswith("-00")
        # a sampled parent with a tracestate
        out = curl("-H", f"traceparent: 00-{TID}-{PID}-01", "-H", "tracestate: vendor=x", "-A", "test-agent/1",
                   f"http://127.0.0.1:{port}/hello?a=1")
        assert out.stdout == "ok\n"
        upstream_tp = ok.seen[-1][2]["traceparent"]
        # no parent: a new trace (http.client, not curl)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/new", body=b"x")
        assert conn.getresponse().read() == b"ok\n"
        new_tp = ok.seen[-1][2]["traceparent"]
        # a backend that is down: retried once, then 503
        conn.request("GET", "/broken")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (503, b"down\n")
        conn.close()

        spans = collector.wait_for(3)
        time.sleep(0.5)   # a few more export rounds: the unsampled request must still be missing
        spans = collector.spans()
        assert len(spans) == 3, [s.name for _, s in spans]
        resource = spans[0][0]
        assert resource["service.name"] == "waypoint.default" and resource["k8s.namespace.name"] == "default"
        by_path = {attrs(s.attributes)["url.path"]: s for _, s in spans}
        assert set(by_path) == {"/hello", "/new", "/broken"}

        child = by_path["/hello"]
        assert (child.trace_id.hex(), child.parent_span_id.hex()) == (TID, PID)
        assert upstream_tp == f"00-{TID}-{child.span_id.hex()}-01"   # the span id the backend saw as parent
        assert (child.kind, child.status.code, child.trace_state) == (Span.SPAN_KIND_SERVER,
                                                                      Status.STATUS_CODE_UNSET, "vendor=x")
        assert child.flags == 0x301   # sampled, the parent is remote
        assert child.name == "web.default.svc.cluster.local:80/*"
        assert 0 < child.end_time_unix_nano - child.start_time_unix_nano < 10 * 10**9
        assert abs(child.start_time_unix_nano / 1e9 - time.time()) < 60
        a = attrs(child.attributes)
        assert {k: a[k] for k in ("http.request.method", "url.path", "url.query", "url.scheme",
                                  "http.response.status_code", "network.protocol.version", "server.address",
                                  "server.port", "client.address", "user_agent.original", "upstream_cluster",
                                  "upstream_host", "trellis.attempts")} == {
            "http.request.method": "GET", "url.path": "/hello", "url.query": "a=1", "url.scheme": "http",
            "http.response.status_code": 200, "network.protocol.version": "1.1", "server.address": "127.0.0.1",
            "server.port": port, "client.address": "127.0.0.1", "user_agent.original": "test-agent/1",
            "upstream_cluster": "inbound-vip|80|http|web.default.svc.cluster.local",
            "upstream_host": f"{OK_ADDR}:{ok.server_address[1]}", "trellis.attempts": 1}
        assert "source.principal" not in a and "error.type" not in a   # plaintext: no identity

        root = by_path["/new"]
        assert root.parent_span_id == b"" and root.flags == 0x101   # a root span: the parent is not remote
        assert new_tp == f"00-{root.trace_id.hex()}-{root.span_id.hex()}-01"
        assert attrs(root.attributes)["http.request.method"] == "POST"

        failed = by_path["/broken"]
        fa = attrs(failed.attributes)
        assert failed.status.code == Status.STATUS_CODE_ERROR
        assert (fa["http.response.status_code"], fa["error.type"], fa["trellis.attempts"]) == (503, "503", 2)
        assert fa["upstream_cluster"] == "inbound-vip|80|http|broken.default.svc.cluster.local"
        assert len({s.span_id for _, s in spans}) == 3
    finally:
        stop(proc)
        collector.close()
        ok.shutdown()
        down.shutdown()


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_an_unreachable_collector_logs_once_counts_and_never_holds_requests(tmp_path):
    ok = backend(OK_ADDR, "ok")
    dead = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    proc, port, metrics = start_waypoint(tmp_path, ok.server_address[1], 9, "--otlp-endpoint", dead)
    try:
        for _ in range(4):   # several export rounds (every 0.1 s), each failing
            out = curl("-w", " %{http_code}", *[f"http://127.0.0.1:{port}/{i}" for i in range(10)])
            assert out.stdout == "ok\n 200" * 10
            time.sleep(0.3)
        deadline = time.monotonic() + 20
        while _metric(metrics, "trellis_waypoint_span_export_failures_total") < 3:
            assert time.monotonic() < deadline, "the failed exports were not counted"
            time.sleep(0.1)
        assert _metric(metrics, 'trellis_waypoint_spans_dropped_total{reason="export_failed"}') >= 3
        assert _metric(metrics, "trellis_waypoint_spans_exported_total") == 0
    finally:
        stop(proc)
        ok.shutdown()
    log = (tmp_path / "wp.log").read_text()
    assert log.count("cannot export spans to") == 1, log
    assert f"{dead}/v1/traces" in log


def test_a_full_queue_drops_spans_and_counts_them(tmp_path):
    """No export round during the test (60 s apart, batches larger than the queue): of 30
    requests, the queue keeps 4 and 26 are dropped; every request is served."""
    ok, collector = backend(OK_ADDR, "ok"), Collector()
    proc, port, metrics = start_waypoint(tmp_path, ok.server_address[1], 9, "--otlp-endpoint", collector.url,
                                         env={"OTEL_BSP_MAX_QUEUE_SIZE": "4", "OTEL_BSP_SCHEDULE_DELAY": "60000"})
    try:
        out = curl("-w", " %{http_code}", *[f"http://127.0.0.1:{port}/{i}" for i in range(30)])
        assert out.stdout == "ok\n 200" * 30
        assert _metric(metrics, 'trellis_waypoint_spans_dropped_total{reason="queue_full"}') == 26
        stop(proc)   # a stopping waypoint flushes what is queued
        spans = collector.wait_for(4)
        assert sorted(attrs(s.attributes)["url.path"] for _, s in spans) == ["/0", "/1", "/2", "/3"]
    finally:
        if proc.poll() is None:
            stop(proc)
        collector.close()
        ok.shutdown()


def test_a_bad_exporter_setting_stops_the_start_naming_it(tmp_path):
    res = subprocess.run([sys.executable, "-m", "waypoint", "--standalone-config", str(tmp_path / "x.yaml"),
                          "--listen", "127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"))
    assert res.returncode == 2 and "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'" in res.stderr


GATEWAY = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default, annotations: {trellis.dev/otlp-endpoint: "%s"}}
spec: {gatewayClassName: trellis-waypoint}
---
"""


async def test_through_hbone_the_span_names_the_identities_and_the_gateway_turns_export_off(tmp_path):
    """The Gateway's annotation configures the exporter (no flag, no variable), and a new
    snapshot without it stops the export at runtime."""
    ok, collector = backend(MESH_ADDR, "ok"), Collector()
    base = NAMESPACE + service("web", "10.96.0.10", ok.server_address[1], "ok") + workload("ok", MESH_ADDR, "ok")
    try:
        async with mesh(tmp_path) as m:
            await m.start(GATEWAY % collector.url + base, [MESH_ADDR], tracing=Settings(delay=0.1))
            port = await m.bridge("10.96.0.10:80")
            out = await acurl(f"http://127.0.0.1:{port}/via-hbone")
            assert out.stdout == "ok\n"
            (resource, span), = await trio.to_thread.run_sync(collector.wait_for, 1)
            a = attrs(span.attributes)
            assert a["source.principal"] == SLEEP_ID and a["destination.principal"] == WEB_ID
            assert a["url.path"] == "/via-hbone" and a["server.address"] == "127.0.0.1"
            assert ok.seen[-1][2]["traceparent"].split("-")[2] == span.span_id.hex()
            m.waypoint.on_update(resources(GATEWAY % "none" + base), 2)
            assert not m.waypoint.tracer.enabled
            out = await acurl(f"http://127.0.0.1:{port}/after")
            assert out.stdout == "ok\n"
            await trio.sleep(0.5)
            assert len(collector.spans()) == 1
    finally:
        collector.close()
        ok.shutdown()
