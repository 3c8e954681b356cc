"""The waypoint process (real TLS, real HBONE in and out, a real backend, curl) evaluating
Istio's request fields: the Host as sent, request headers, the caller's address, AUDIT
logged on the access-log line without changing the answer."""
from __future__ import annotations

import json
import logging

import pytest

from wp_process import NAMESPACE, acurl, backend, mesh, service, workload

WEB = "127.0.0.41"

POLICIES = """apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-fields, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
  action: DENY
  rules:
  - to: [{operation: {hosts: ["*.blocked.test", "api.blocked.test:*"]}}]
  - to: [{operation: {notMethods: ["GET", "HEAD"], paths: ["/ro/*"]}}]
  - when: [{key: "request.headers[x-debug]", values: ["on"]}, {key: source.ip, values: ["127.0.0.0/8"]}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
  action: AUDIT
  rules: [{to: [{operation: {methods: ["POST", "DELETE"]}}]}]
---
"""


@pytest.fixture
async def wp(tmp_path):
    srv = backend(WEB, "web")
    text = NAMESPACE + service("web", "10.96.0.10", srv.server_address[1], "web") + workload("web", WEB, "web") + POLICIES
    async with mesh(tmp_path) as m:
        await m.start(text, [WEB])
        m.server = srv
        yield m
    srv.shutdown()


async def status(port: int, *args: str) -> str:
    out = await acurl("--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", *args)
    return out.stdout.strip()


async def test_hosts_methods_headers_and_the_callers_address(wp):
    port = await wp.bridge("10.96.0.10:80")
    url = f"http://127.0.0.1:{port}"
    assert await status(port, "-H", "Host: api.blocked.test", f"{url}/") == "403"
    assert await status(port, "-H", "Host: API.Blocked.Test:8080", f"{url}/") == "403"
    assert await status(port, "-H", "Host: api.allowed.test", f"{url}/") == "200"
    assert await status(port, "-X", "POST", f"{url}/ro/x") == "403"      # notMethods with paths
    assert await status(port, "-X", "POST", f"{url}/rw/x") == "200"
    assert await status(port, f"{url}/ro/x") == "200"
    # the header condition with source.ip: the waypoint's caller here is the client pool at 127.0.0.1
    assert await status(port, "-H", "X-Debug: on", f"{url}/") == "403"
    assert await status(port, "-H", "X-Debug: off", f"{url}/") == "200"
    assert not any(p.startswith("/ro/") and m == "POST" for m, p, _ in wp.server.seen)


async def test_audit_is_logged_and_decides_nothing(wp, caplog):
    caplog.set_level(logging.INFO, logger="trellis.access")
    port = await wp.bridge("10.96.0.10:80")
    url = f"http://127.0.0.1:{port}"
    assert await status(port, "-X", "DELETE", f"{url}/rw/1") == "200"             # audited, allowed
    assert await status(port, "-X", "DELETE", f"{url}/ro/1") == "403"             # audited, denied
    assert await status(port, f"{url}/plain") == "200"                           # not audited
    lines = {}
    for r in caplog.records:
        if r.name == "trellis.access":
            entry = json.loads(r.getMessage())
            lines[(entry["method"], entry["path"])] = entry
    assert lines[("DELETE", "/rw/1")]["audit"] == "default/audit-writes" and lines[("DELETE", "/rw/1")]["status"] == 200
    assert lines[("DELETE", "/ro/1")]["audit"] == "default/audit-writes" and lines[("DELETE", "/ro/1")]["status"] == 403
    assert "audit" not in lines[("GET", "/plain")]
