"""L7 peers: one HTTP/1.1 reverse proxy in the plain client pod (listening on 127.0.0.1) that
routes to the plain web pod with a retry policy, as a waypoint would. One worker each. No TLS
and no second hop: the rows measure what parsing, routing and retrying HTTP costs.

The config builders are pure (text out) so the tests can read them and the real tools can
validate them without a lab."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .peers import Peer, _endpoint, _spawn, envoy_binary

NAMES = ("envoy-l7", "haproxy-l7", "nginx-l7", "waypoint")
LOCAL = {"envoy-l7": 18100, "haproxy-l7": 18110, "nginx-l7": 18120, "waypoint": 18130}   # 127.0.0.1 in the client pod
WORKERS = {"envoy-l7": "--concurrency 1", "haproxy-l7": "nbthread 1", "nginx-l7": "worker_processes 1",
           "waypoint": "1 process (trio)"}
PROXY = {"envoy-l7": "envoy HCM (HTTP/1.1)", "haproxy-l7": "haproxy mode http", "nginx-l7": "nginx proxy_pass",
         "waypoint": "trellis waypoint (standalone, HTTP/1.1)"}


def envoy_config(port: int, web: str, web_port: int) -> str:
    return f"""static_resources:
  listeners:
  - name: l7
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l7
          codec_type: HTTP1
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: web
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: web
                  timeout: 5s
                  retry_policy:
                    retry_on: "5xx,connect-failure,reset"
                    num_retries: 2
                    per_try_timeout: 1s
                    retry_back_off: {{base_interval: 0.25s}}
  clusters:
  - name: web
    connect_timeout: 5s
    {_endpoint("web", web, web_port)}
"""


def haproxy_config(port: int, web: str, web_port: int) -> str:
    # `option redispatch` only matters with a second server; kept so the config reads as a
    # production one would. `-db` (below) keeps haproxy in the foreground, one process.
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s
    retries 2
    option redispatch

frontend l7
    bind 127.0.0.1:{port}
    default_backend web

backend web
    server web {web}:{web_port}
"""


def nginx_config(port: int, web: str, web_port: int, d: Path) -> str:
    # nginx retries on the *next* server only and never repeats one, so with a single server
    # proxy_next_upstream would have nothing to retry on: the app is listed twice (the same
    # address, so connections go to one place) to give the retry a real second try.
    # keepalive_requests is raised on both sides because nginx alone would otherwise close
    # every connection after 1000 requests, a cost Envoy and haproxy do not pay.
    return f"""worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  upstream web {{
    server {web}:{web_port};
    server {web}:{web_port};
    keepalive 32;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 5s;
      proxy_read_timeout 5s;
    }}
  }}
}}
"""


def waypoint_config(web: str, web_port: int) -> str:
    """Our own resources, Envoy's retry setup: 5xx retried twice, 0.25 s backoff, 1 s per try,
    5 s in all. The web pod is a WorkloadEntry outside the mesh: plaintext, as the peers."""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: web, namespace: bench, labels: {{trellis.dev/use-waypoint: waypoint}}}}
spec: {{clusterIP: 10.96.0.10, selector: {{app: web}}, ports: [{{name: http, port: 80, targetPort: {web_port}}}]}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: web, namespace: bench}}
spec: {{address: {web}, node: bench, labels: {{app: web}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: bench}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - backendRefs: [{{name: web, port: 80}}]
    timeouts: {{request: 5s, backendRequest: 1s}}
    retry: {{attempts: 2, codes: [500, 502, 503, 504], backoff: 250ms}}
"""


def command(name: str, d: Path, web: str, web_port: int, port: int | None = None) -> list[str]:
    """Write `name`'s config under d and return the command that runs it in the foreground,
    listening on 127.0.0.1:port (default: its LOCAL port)."""
    if name not in NAMES:
        raise ValueError(f"unknown L7 peer {name!r} (known: {', '.join(NAMES)})")
    port = port or LOCAL[name]
    d.mkdir(parents=True, exist_ok=True)
    if name == "envoy-l7":
        (d / "envoy-l7.yaml").write_text(envoy_config(port, web, web_port))
        return [envoy_binary(), "-c", str(d / "envoy-l7.yaml"), "--concurrency", "1", "--disable-hot-restart",
                "--log-level", os.environ.get("TRELLIS_BENCH_ENVOY_LOG", "warn")]
    if name == "waypoint":
        (d / "waypoint.yaml").write_text(waypoint_config(web, web_port))
        # no access log (the peers run without one); admin on the next port for /clusters
        return [sys.executable, "-m", "waypoint", "--namespace", "bench", "--standalone-config",
                str(d / "waypoint.yaml"), "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{port + 1}",
                "--log-level", "WARNING"]
    if name == "haproxy-l7":
        (d / "haproxy-l7.cfg").write_text(haproxy_config(port, web, web_port))
        return [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(d / "haproxy-l7.cfg")]
    nd = d / "nginx-l7"  # nginx-l7
    nd.mkdir(exist_ok=True)
    (nd / "nginx.conf").write_text(nginx_config(port, web, web_port, nd))
    # -p and -e keep nginx away from /etc/nginx and /var/log/nginx: everything is under nd
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(nd), "-c", str(nd / "nginx.conf"), "-e", "stderr"]


def start(name: str, d: Path, client_pod: dict, server_pod: dict, web_port: int = 8080) -> Peer:
    argv = command(name, d, server_pod["address"], web_port)
    return Peer(name, WORKERS[name], [_spawn(name, argv, client_pod, d / f"{name}.log")])
