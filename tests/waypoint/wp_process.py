"""A waypoint process under test, with real parts around it: a real CA issuing workload
certificates, backends (stdlib HTTP/1.1 servers on 127.0.0.x), a destination "ztunnel"
(meshcore's HBONE server relaying each tunnel to its authority), and a client "ztunnel"
(a loopback TCP listener per authority whose connections go over HBONE to the waypoint
with the caller's workload certificate), so that curl speaks to the waypoint as a meshed
pod would."""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import http.server
import subprocess
import threading
import time
from pathlib import Path

import trio

from controlplane.ca import CertificateAuthority, build_csr, generate_key, key_pem
from meshcore import tls
from meshcore.hbone import HboneClientPool, HboneError, serve_hbone
from meshcore.identity import CertBundle, workload_identity
from meshcore.resources.loader import parse_documents
from waypoint.app import Config, Waypoint

TD = "cluster.local"
WAYPOINT_ID = workload_identity(TD, "default", "waypoint")
SLEEP_ID = workload_identity(TD, "default", "sleep")
WEB_ID = workload_identity(TD, "default", "web")


def issue(ca: CertificateAuthority, uri: str) -> CertBundle:
    key = generate_key()
    csr, _ = ca.check_csr(build_csr(key, uri))
    return CertBundle(key_pem(key), tuple(ca.sign(csr, uri, dt.timedelta(hours=1))), ca.roots_pem)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as a real backend
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms delayed-ACK stall

    def _answer(self):
        srv = self.server
        with srv.lock:
            srv.count += 1
            n = srv.count
        srv.seen.append((self.command, self.path, dict(self.headers)))
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if srv.mode == "slow":
            time.sleep(2.0)
        status = 503 if (srv.mode == "flaky" and n % 2 == 1) or srv.mode == "down" else 200
        body = f"{srv.name}\n".encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-backend", srv.name)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *a):
        pass


def backend(address: str, name: str, mode: str = "ok", idle_timeout: float | None = None):
    """idle_timeout: close a keep-alive connection idle that long (as nginx's keepalive_timeout)."""
    handler = type("TimedHandler", (Handler,), {"timeout": idle_timeout}) if idle_timeout else Handler
    srv = http.server.ThreadingHTTPServer((address, 0), handler)
    srv.daemon_threads = True
    srv.name, srv.mode, srv.count, srv.lock, srv.seen = name, mode, 0, threading.Lock(), []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def service(name: str, vip: str, target_port: int, app: str, waypoint: bool = True, port_name: str = "http",
            app_protocol: str | None = None) -> str:
    """Port 80 named `port_name` ("http" declares HTTP/1.1 upstream, "grpc"/"http2" h2c, "web" nothing)."""
    label = "{trellis.dev/use-waypoint: waypoint}" if waypoint else "{}"
    proto = f", appProtocol: {app_protocol}" if app_protocol else ""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default, labels: {label}}}
spec: {{clusterIP: {vip}, selector: {{app: {app}}}, ports: [{{name: {port_name}, port: 80, targetPort: {target_port}{proto}}}]}}
---
"""


def workload(name: str, address: str, app: str, sa: str = "web") -> str:
    return f"""apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: default}}
spec: {{address: {address}, node: node1, serviceAccount: {sa}, labels: {{app: {app}}}}}
---
"""


def grpc_server(address: str, service: str, method: str, handler):
    """A grpcio server on address:0 (raw bytes, no stubs) with one method; (server, port),
    serving before it returns. `handler`: grpc.*_rpc_method_handler(...)."""
    import concurrent.futures

    import grpc
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    port = server.add_insecure_port(f"{address}:0")
    server.start()
    with grpc.insecure_channel(f"{address}:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
    return server, port


def route(name: str, *rule: str) -> str:
    """An HTTPRoute for Service `name` with one rule sending everything to it; `rule`: more
    lines of that rule (retry, timeouts)."""
    extra = "".join(f"    {line}\n" for line in rule)
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {name}, port: 80}}]
  rules:
  - backendRefs: [{{name: {name}, port: 80}}]
{extra}---
"""


def retry_route(name: str) -> str:
    """An HTTPRoute for Service `name` retrying 503 twice (10 ms backoff), with a 100% retry
    budget: a backend failing every other request needs a retry for half of them, above the
    default 20% budget."""
    return route(name, "retry: {attempts: 2, codes: [503], backoff: 10ms}") + f"""apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs: [{{kind: Service, name: {name}}}]
  retryBudget: {{percent: 100}}
---
"""


NAMESPACE = """apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {trellis.dev/dataplane-mode: ambient}}
---
"""


def resources(text: str) -> list:
    result = parse_documents(text, "test.yaml")
    assert not result.errors, result.errors
    return list(result.resources)


async def _relay(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    async def pump(src, dst):
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    async with trio.open_nursery() as n:
        n.start_soon(pump, a, b)
        n.start_soon(pump, b, a)


class Mesh:
    """Everything started; `bridge(authority)` gives a loopback port that reaches the
    waypoint over HBONE with that authority, as the caller's ztunnel would."""

    def __init__(self, tmp: Path, nursery: trio.Nursery):
        self.ca = CertificateAuthority.load_or_create(tmp / "ca", TD)
        self.nursery = nursery
        self.certs = {i: issue(self.ca, i) for i in (WAYPOINT_ID, SLEEP_ID, WEB_ID)}
        self.waypoint: Waypoint | None = None
        self.pool: HboneClientPool | None = None
        self.hbone_port = 0

    async def start(self, text: str, ztunnel_addresses: list[str], **config) -> None:
        cfg = Config("default", "waypoint", TD, "waypoint", hbone=("127.0.0.1", 0), admin=("127.0.0.1", 0),
                     metrics=None, ready=None, **config)
        self.waypoint = Waypoint(cfg, bootstrap=self.certs[WAYPOINT_ID], resources=resources(text))
        self.waypoint.upstream.hbone_port = await self._ztunnels(ztunnel_addresses)
        await self.nursery.start(functools.partial(self.waypoint.run, handle_signals=False))
        self.hbone_port = self.waypoint.listeners["hbone"].socket.getsockname()[1]
        self.pool = await self.nursery.start(self._pool)

    async def _pool(self, task_status=trio.TASK_STATUS_IGNORED):
        web = self.certs[SLEEP_ID]
        async with HboneClientPool(lambda _i: tls.client_context(web, alpn=["h2"])) as pool:
            task_status.started(pool)
            await trio.sleep_forever()

    async def _ztunnels(self, addresses: list[str]) -> int:
        """The destination ztunnel: one HBONE server per endpoint address, the same port on each."""
        ctx = tls.server_context(self.certs[WEB_ID], alpn=["h2"])

        async def handler(tunnel):
            host, port = tunnel.authority
            try:
                up = await trio.open_tcp_stream(host, port)
            except OSError:
                await tunnel.refuse(503, "connection refused by the app")
                return
            stream = await tunnel.accept()
            async with up:
                await _relay(stream, up)

        for _ in range(20):
            first = (await trio.open_tcp_listeners(0, host=addresses[0]))[0]
            port = first.socket.getsockname()[1]
            listeners = [first]
            try:
                for a in addresses[1:]:
                    listeners += await trio.open_tcp_listeners(port, host=a)
            except OSError:
                for ln in listeners:
                    await ln.aclose()
                continue
            await self.nursery.start(functools.partial(serve_hbone, listeners, lambda: ctx, handler))
            return port
        raise RuntimeError("no common free port for the test ztunnels")

    async def bridge(self, authority: str, identity: str = SLEEP_ID) -> int:
        """A loopback port: each connection becomes an HBONE tunnel to the waypoint."""
        ctx_bundle = self.certs.get(identity) or issue(self.ca, identity)

        async def serve(tcp):
            async with HboneClientPool(lambda _i: tls.client_context(ctx_bundle, alpn=["h2"])) as pool:
                try:
                    tunnel = await pool.connect(("127.0.0.1", self.hbone_port), authority, WAYPOINT_ID, identity)
                except HboneError:
                    await tcp.aclose()   # as ztunnel: a refused tunnel closes the caller's connection
                    return
                async with tcp:
                    await _relay(tcp, tunnel)

        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        self.nursery.start_soon(trio.serve_listeners, serve, [listener])
        return listener.socket.getsockname()[1]


@contextlib.asynccontextmanager
async def mesh(tmp: Path):
    async with trio.open_nursery() as nursery:
        m = Mesh(tmp, nursery)
        yield m
        nursery.cancel_scope.cancel()


async def h2_backend(nursery: trio.Nursery, host: str, connection) -> int:
    """A prior-knowledge HTTP/2 backend at host:0 on the waypoint's own adapter; its port.
    `connection()` is called per connection and returns `answer(h2, events) -> bytes`, the
    frames replying to each batch of the adapter's events."""
    from waypoint.http.h2 import HTTP2Server

    async def serve(stream):
        h2, answer = HTTP2Server(), connection()
        async with stream:
            await stream.send_all(h2.data_to_send())
            while data := await stream.receive_some(65536):
                h2.receive_data(data)
                out = answer(h2, h2.events()) + h2.data_to_send()
                if out:
                    await stream.send_all(out)
                if h2.failed is not None:   # not HTTP/2: the adapter refused the connection
                    return

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host=host))
    return listeners[0].socket.getsockname()[1]


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "--max-time", "20", *args], capture_output=True, text=True, timeout=timeout)


async def acurl(*args: str) -> subprocess.CompletedProcess:
    return await trio.to_thread.run_sync(functools.partial(curl, *args))
