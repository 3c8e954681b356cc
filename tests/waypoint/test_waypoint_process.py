"""The waypoint process with real TLS, real HBONE in and out, real backends and curl."""
from __future__ import annotations

import re
import subprocess

import trio

import pytest

from wp_process import SLEEP_ID, NAMESPACE, acurl, backend, grpc_server, mesh, retry_route, service, workload

V1, V2, FLAKY, SLOW, GRPC, SHORT = "127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24", "127.0.0.25", "127.0.0.26"

ROUTES = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
  - backendRefs: [{name: web-v1, port: 80}]
---
""" + retry_route("flaky") + """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: slow, port: 80}]
  rules:
  - backendRefs: [{name: slow, port: 80}]
    timeouts: {request: 3s, backendRequest: 500ms}
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: limited, namespace: default}
spec:
  targetRefs: [{kind: Service, name: limited}]
  requestsPerUnit: 3
  unit: Minute
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
---
"""


GRPC_BUDGET = """apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: grpc, namespace: default}
spec:
  targetRefs: [{kind: Service, name: grpc}]
  retryBudget: {percent: 100}
---
"""


def grpc_backend(address: str):
    """A grpcio server (raw bytes, no stubs) whose every other call fails with UNAVAILABLE."""
    import threading

    import grpc
    calls, lock = [], threading.Lock()

    def say(request: bytes, context) -> bytes:
        with lock:
            calls.append(request)
            n = len(calls)
        if n % 2 == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "flaky backend")
        return b"hello " + request

    server, port = grpc_server(address, "test.Echo", "Say", grpc.unary_unary_rpc_method_handler(say))
    return server, port, calls


@pytest.fixture
async def wp(tmp_path):
    servers = {"v1": backend(V1, "v1"), "v2": backend(V2, "v2"), "flaky": backend(FLAKY, "flaky", "flaky"),
               "slow": backend(SLOW, "slow", "slow"), "short": backend(SHORT, "short", idle_timeout=0.3)}
    port = {k: s.server_address[1] for k, s in servers.items()}
    grpc_server, port["grpc"], grpc_calls = grpc_backend(GRPC)
    text = (NAMESPACE
            + service("web", "10.96.0.10", port["v1"], "v1")
            + service("web-v1", "10.96.0.11", port["v1"], "v1", waypoint=False)
            + service("web-v2", "10.96.0.12", port["v2"], "v2", waypoint=False)
            + service("flaky", "10.96.0.13", port["flaky"], "flaky")
            + service("slow", "10.96.0.14", port["slow"], "slow")
            + service("limited", "10.96.0.15", port["v2"], "v2")
            + workload("v1", V1, "v1") + workload("v2", V2, "v2") + workload("flaky", FLAKY, "flaky")
            + workload("slow", SLOW, "slow") + ROUTES
            + service("grpc", "10.96.0.16", port["grpc"], "grpc", port_name="grpc") + workload("grpc", GRPC, "grpc") + GRPC_BUDGET
            + service("short", "10.96.0.17", port["short"], "short") + workload("short", SHORT, "short"))
    async with mesh(tmp_path) as m:
        await m.start(text, [V1, V2, FLAKY, SLOW, GRPC, SHORT])
        m.servers, m.grpc_calls = servers, grpc_calls
        yield m
    grpc_server.stop(0)
    for s in servers.values():
        s.shutdown()


async def test_path_header_routing_and_a_90_10_split(wp):
    port = await wp.bridge("10.96.0.10:80")
    canary = await acurl("-H", "x-canary: true", f"http://127.0.0.1:{port}/")
    assert canary.stdout == "v2\n"
    plain = await acurl(f"http://127.0.0.1:{port}/other")
    assert plain.stdout == "v1\n"
    n = 1000   # one curl, one keep-alive connection, n requests
    out = await acurl(*[f"http://127.0.0.1:{port}/api/{i}" for i in range(n)])
    v1, v2 = out.stdout.count("v1\n"), out.stdout.count("v2\n")
    assert v1 + v2 == n
    # binomial(1000, 0.1): mean 100, sd 9.5; +-5 sd
    assert 52 <= v2 <= 148, (v1, v2)
    # keep-alive upstream: far fewer connections to the backends than requests
    assert wp.waypoint.upstream.opened < 50
    # the caller's identity reached the metrics
    assert wp.waypoint.metrics.value("istio_requests_total", source_principal=SLEEP_ID, response_code="200",
                                     reporter="waypoint") >= n
    # traceparent: generated when absent, trace id kept and span id changed when present
    seen = wp.servers["v1"].seen
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", h["traceparent"]) for _, _, h in seen)
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await acurl("-H", f"traceparent: {tp}", f"http://127.0.0.1:{port}/other")
    got = seen[-1][2]["traceparent"]
    assert got.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-") and "00f067aa0ba902b7" not in got


async def test_retries_hide_a_backend_failing_every_other_request(wp):
    port = await wp.bridge("10.96.0.13:80")
    out = await acurl("-w", "%{http_code}\n", *[f"http://127.0.0.1:{port}/{i}" for i in range(40)])
    assert out.stdout == "flaky\n200\n" * 40
    assert wp.servers["flaky"].count >= 79   # every request failed once and was retried
    assert wp.waypoint.metrics.value("trellis_waypoint_retries_total", destination_service="default/flaky") >= 39


async def test_slow_backend_gets_504(wp):
    port = await wp.bridge("10.96.0.14:80")
    out = await acurl("-w", "%{http_code}", f"http://127.0.0.1:{port}/")
    assert out.stdout.endswith("504")
    assert "backendRequest timeout" in out.stdout


async def test_rate_limit_429_with_headers(wp):
    port = await wp.bridge("10.96.0.15:80")
    out = await acurl("-i", *[f"http://127.0.0.1:{port}/{i}" for i in range(5)])
    statuses = re.findall(r"^HTTP/1.1 (\d+)", out.stdout, re.M)
    assert statuses == ["200", "200", "200", "429", "429"]
    # admitted answers carry the draft's fields as well, with the quota left after them
    admitted = [h.lower() for h in out.stdout.split("HTTP/1.1 ")[1:4]]
    assert [re.search(r'^ratelimit: "default/limited";r=(\d)', h, re.M)[1] for h in admitted] == ["2", "1", "0"]
    assert all('ratelimit-policy: "default/limited";q=3;w=60' in h for h in admitted)
    last = out.stdout.rsplit("HTTP/1.1 429", 1)[1].lower()
    assert "retry-after:" in last and "ratelimit-policy:" in last and "ratelimit:" in last
    assert wp.waypoint.metrics.value("trellis_waypoint_rate_limited_total") == 2


@pytest.mark.parametrize("path", ["/admin", "//admin", "/./admin", "/%61dmin", "/x/../admin/users"])
async def test_deny_admin_403_for_every_spelling(wp, path):
    port = await wp.bridge("10.96.0.10:80")
    out = await acurl("--path-as-is", "-w", "%{http_code}", f"http://127.0.0.1:{port}{path}")
    assert out.stdout.endswith("403"), out.stdout
    assert "RBAC: access denied" in out.stdout
    assert not any("admin" in p for _, p, _ in wp.servers["v1"].seen)


async def test_escaped_slash_is_400(wp):
    port = await wp.bridge("10.96.0.10:80")
    out = await acurl("--path-as-is", "-w", "%{http_code}", f"http://127.0.0.1:{port}/%2Fadmin")
    assert out.stdout.endswith("400")
    assert not wp.servers["v1"].seen


async def test_pod_ip_behind_the_service_keeps_its_policy_without_routes(wp):
    """Dialling v1's pod IP on the Service's targetPort: the waypoint applies web's policy
    (v1 is an endpoint of web) but no route: /api goes to that pod, never split."""
    port = await wp.bridge(f"{'127.0.0.21'}:{wp.servers['v1'].server_address[1]}")
    denied = await acurl("-w", "%{http_code}", f"http://127.0.0.1:{port}/admin")
    assert denied.stdout.endswith("403")
    out = await acurl(*[f"http://127.0.0.1:{port}/api/{i}" for i in range(50)])
    assert out.stdout == "v1\n" * 50


async def test_unknown_authority_and_foreign_services_are_refused(wp):
    from meshcore.hbone import HboneTunnelRefused
    from wp_process import WAYPOINT_ID
    wp.waypoint.config.config_grace = 0.1   # how long a refusal waits for a snapshot that binds it
    for authority, why in (("10.96.0.99:80", "neither a Service port"), ("10.96.0.11:80", "does not use waypoint")):
        with pytest.raises(HboneTunnelRefused) as err:
            await wp.pool.connect(("127.0.0.1", wp.hbone_port), authority, WAYPOINT_ID, SLEEP_ID)
        assert "404" in str(err.value) and why in str(err.value)


async def test_grpc_through_the_waypoint_retried_on_unavailable(wp):
    import grpc
    port = await wp.bridge("10.96.0.16:80")

    def calls() -> list[bytes]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            return [say(f"n{i}".encode(), timeout=10) for i in range(10)]
    replies = await trio.to_thread.run_sync(calls)
    assert replies == [f"hello n{i}".encode() for i in range(10)]
    assert len(wp.grpc_calls) == 20   # each call failed once with UNAVAILABLE and was retried
    assert wp.waypoint.metrics.value("istio_requests_total", request_protocol="grpc", response_code="200") == 10
    assert wp.waypoint.metrics.value("trellis_waypoint_retries_total", destination_service="default/grpc",
                                     reason="grpc-status 14") == 10


async def _raw(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.move_on_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


async def test_smuggling_and_oversized_headers_are_refused_while_others_are_served(wp):
    port = await wp.bridge("10.96.0.10:80")
    smuggle = (b"POST /other HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: web\r\n\r\n")
    big = b"GET /other HTTP/1.1\r\nHost: web\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n"
    many = b"GET /other HTTP/1.1\r\nHost: web\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(150)) + b"\r\n"
    async with trio.open_nursery() as n:
        results = {}

        async def bad(name, data):
            results[name] = await _raw(port, data)

        async def good():
            results["good"] = await acurl(*[f"http://127.0.0.1:{port}/other"] * 20)
        for name, data in (("smuggle", smuggle), ("big", big), ("many", many)):
            n.start_soon(bad, name, data)
        n.start_soon(good)
    assert results["smuggle"].startswith(b"HTTP/1.1 400 ")
    assert b"smuggling" in results["smuggle"] and b"/admin" not in results["smuggle"]
    assert results["big"].startswith(b"HTTP/1.1 431 ") and results["many"].startswith(b"HTTP/1.1 431 ")
    assert results["good"].stdout == "v1\n" * 20
    assert not any(p == "/admin" or m == "POST" for m, p, _ in wp.servers["v1"].seen)


async def test_a_silent_tunnel_is_forwarded_as_l4(wp):
    """Not HTTP (the client says nothing first, as in a server-first protocol): plain bytes to the
    endpoint. The backend is HTTP, so bytes sent after the sniff arrive and are answered."""
    port = await wp.bridge("10.96.0.13:80")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await trio.sleep(2)    # past the sniff wait: forwarded as L4
        await stream.send_all(b"GET /l4 HTTP/1.0\r\n\r\n")
        out = b""
        with trio.move_on_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
    assert out.startswith(b"HTTP/1.1 ") and b"flaky" in out
    assert wp.waypoint.metrics.value("trellis_waypoint_tunnels_total", protocol="l4") == 1


async def test_waiting_out_detection_does_not_escape_an_l7_deny(wp):
    """web has a DENY with paths: at L4 it matches every connection (fail closed), so a client
    that stays silent to be taken for L4 and then sends GET /admin is cut off."""
    port = await wp.bridge("10.96.0.10:80")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await trio.sleep(2)
        out = b""
        with trio.move_on_after(10):
            try:
                await stream.send_all(b"GET /admin HTTP/1.0\r\n\r\n")
                while chunk := await stream.receive_some(65536):
                    out += chunk
            except trio.BrokenResourceError:
                pass
    assert out == b""
    assert not any(p == "/admin" for _, p, _ in wp.servers["v1"].seen)
    assert wp.waypoint.metrics.value("trellis_waypoint_authz_denied_total", destination_service="default/web") == 1


async def test_admin_routes_clusters_and_config_dump(wp):
    from meshcore.admin import get_json
    port = wp.waypoint.listeners["admin"].socket.getsockname()[1]
    get = lambda path: trio.to_thread.run_sync(get_json, "127.0.0.1", port, path)   # noqa: E731
    routes = {r["service"]: r for r in await get("/routes")}
    web = routes["default/web"]
    assert web["authorization"] == ["default/deny-admin"] and web["vip"] == "10.96.0.10"
    split = web["routes"][0]["rules"][1]["backends"]
    assert [(b["service"], b["weight"]) for b in split] == [("default/web-v1", 90), ("default/web-v2", 10)]
    assert routes["default/limited"]["rateLimits"] == ["default/limited"]
    assert routes["default/flaky"]["trafficPolicy"] == "default/flaky"
    assert "default/web-v1" not in routes    # not fronted by this waypoint
    # rules as a user wrote them (what `trellis routes` prints)
    assert web["routes"][0]["rules"][1]["matches"] == [{"path": {"type": "PathPrefix", "value": "/api"},
                                                        "headers": [], "queryParams": []}]
    assert routes["default/flaky"]["routes"][0]["rules"][0]["retry"] == {"codes": [503], "attempts": 2,
                                                                         "backoff": "10ms"}
    assert routes["default/slow"]["routes"][0]["rules"][0]["timeouts"] == {"request": "3s", "backendRequest": "500ms"}
    clusters = {c["service"]: c for c in await get("/clusters")}
    ep = clusters["default/web-v1"]["endpoints"][f"{V1}:{wp.servers['v1'].server_address[1]}"]
    assert ep["transport"] == "hbone" and ep["ejected"] is False and ep["identity"].endswith("/sa/web")
    dump = await get("/config_dump")
    assert dump["health"]["identity"].endswith("/ns/default/sa/waypoint")
    assert any(s["name"] == "default/web" for s in dump["state"]["services"])


async def test_http2_rapid_reset_closes_only_that_connection(wp):
    import h2.config
    import h2.connection
    import h2.events
    port = await wp.bridge("10.96.0.10:80")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/other")]
    goaway = None
    async with stream:
        for _ in range(300):   # open and reset at once: the 2023 rapid-reset attack
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=True)
            conn.reset_stream(sid)
        await stream.send_all(conn.data_to_send())
        good = await acurl(*[f"http://127.0.0.1:{await wp.bridge('10.96.0.10:80')}/other"] * 5)
        with trio.move_on_after(10):
            while goaway is None and (data := await stream.receive_some(65536)):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ConnectionTerminated):
                        goaway = ev
    assert goaway is not None and goaway.error_code == 0xb   # ENHANCE_YOUR_CALM
    assert good.stdout == "v1\n" * 5


async def test_a_keepalive_connection_the_backend_closed_is_replaced_not_failed(wp):
    port = await wp.bridge("10.96.0.17:80")
    assert (await acurl(f"http://127.0.0.1:{port}/a")).stdout == "short\n"
    await trio.sleep(1.0)    # the backend closes its idle keep-alive connection after 0.3 s
    assert (await acurl(f"http://127.0.0.1:{port}/b")).stdout == "short\n"
    assert wp.waypoint.upstream.stale == 1
    assert wp.waypoint.metrics.value("trellis_waypoint_retries_total", destination_service="default/short") == 0


async def test_draining_closes_keep_alive_connections_after_their_next_answer(wp):
    port = await wp.bridge("10.96.0.10:80")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        async def exchange() -> bytes:
            await stream.send_all(b"GET /other HTTP/1.1\r\nHost: web\r\n\r\n")
            got = b""
            while not got.endswith(b"v1\n"):
                got += await stream.receive_some(65536)
            return got.lower()
        assert b"connection: close" not in await exchange()
        wp.waypoint.draining.set()   # what SIGTERM does
        # the request in the open tunnel is still served, and says the connection ends with it
        assert b"connection: close" in await exchange()
        with trio.fail_after(5):
            assert await stream.receive_some(65536) == b""
    # callers whose ztunnel has not yet heard that the waypoint is going are still served
    # during the grace period (new HBONE connections and tunnels), each answer closing
    late = await acurl("-i", f"http://127.0.0.1:{port}/other")
    assert late.stdout.startswith("HTTP/1.1 200") and "connection: close" in late.stdout.lower()



async def test_http2_request_in_the_preface_segment_is_served(wp, tmp_path):
    # curl --http2-prior-knowledge sends its request with the preface, before our SETTINGS;
    # it used to wait unanswered
    frame = tmp_path / "req.bin"
    frame.write_bytes(b"\x00" + (2).to_bytes(4, "big") + b"hi")
    port = await wp.bridge("10.96.0.16:80")
    out = await trio.to_thread.run_sync(lambda: subprocess.run(
        ["curl", "-s", "--max-time", "10", "--http2-prior-knowledge", "-H", "content-type: application/grpc",
         "-H", "te: trailers", "--data-binary", f"@{frame}", f"http://127.0.0.1:{port}/test.Echo/Say"],
        capture_output=True, timeout=30))
    assert out.returncode == 0 and out.stdout.endswith(b"hello hi"), out
