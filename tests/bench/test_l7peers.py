"""The L7 peers' configs: what they say, that the real tools accept them, and that their retry
policies really retry (each proxy runs for real on the host's loopback, no lab needed)."""
import http.client
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from bench import l7peers
from bench.peers import envoy_binary


def test_envoy_routes_to_the_web_pod_with_the_retry_policy():
    cfg = yaml.safe_load(l7peers.envoy_config(18100, "10.1.2.3", 8080))["static_resources"]
    listener = cfg["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18100}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["codec_type"] == "HTTP1"
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["timeout"] == "5s"
    assert route["retry_policy"] == {"retry_on": "5xx,connect-failure,reset", "num_retries": 2,
                                     "per_try_timeout": "1s", "retry_back_off": {"base_interval": "0.25s"}}
    (cluster,) = cfg["clusters"]
    assert route["cluster"] == cluster["name"]
    ep = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert ep == {"address": "10.1.2.3", "port_value": 8080}


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_haproxy_is_one_thread_in_http_mode_with_retries_and_every_timeout():
    lines = _lines(l7peers.haproxy_config(18110, "10.1.2.3", 8080))
    for want in ("nbthread 1", "mode http", "retries 2", "option redispatch", "bind 127.0.0.1:18110",
                 "server web 10.1.2.3:8080"):
        assert want in lines, want
    timeouts = {line.split()[1] for line in lines if line.startswith("timeout ")}
    assert {"connect", "client", "server"} <= timeouts


def test_nginx_is_one_foreground_worker_keeping_upstream_connections_alive(tmp_path):
    text = l7peers.nginx_config(18120, "10.1.2.3", 8080, tmp_path)
    lines = _lines(text)
    for want in ("worker_processes 1;", "daemon off;", f"pid {tmp_path}/nginx.pid;", "listen 127.0.0.1:18120;",
                 "keepalive 32;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                 "proxy_next_upstream error timeout http_502;", "proxy_pass http://web;"):
        assert want in lines, want
    upstream = text[text.index("upstream web {"):text.index("}", text.index("upstream web {"))]
    assert "keepalive 32;" in upstream and upstream.count("server 10.1.2.3:8080;") == 2
    assert "/etc/nginx" not in text and "/var/" not in text
    assert all(line.split()[1].startswith(str(tmp_path)) for line in lines if "_temp_path" in line)


def test_unknown_peer_is_named():
    with pytest.raises(ValueError, match="unknown L7 peer 'squid-l7'.*envoy-l7"):
        l7peers.command("squid-l7", "/nonexistent", "10.1.2.3", 8080)


VALIDATE = {"envoy-l7": lambda argv: [envoy_binary(), "--mode", "validate", *argv[1:]],
            "haproxy-l7": lambda argv: [*argv, "-c"],
            "nginx-l7": lambda argv: [*argv, "-t"],
            "waypoint": lambda argv: [*argv, "--check"]}


@pytest.mark.parametrize("name", l7peers.NAMES)
def test_the_real_tool_accepts_the_config(name, tmp_path):
    argv = l7peers.command(name, tmp_path, "10.1.2.3", 8080)
    res = subprocess.run(VALIDATE[name](argv), capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr


class FailOnce(BaseHTTPRequestHandler):
    """An app whose first answer is a 502, then 200 ok: tells a retry from none."""
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def do_GET(self):
        self.seen.append(self.path)
        status, body = (502, b"bad") if len(self.seen) == 1 else (200, b"ok")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Envoy retries on 5xx and nginx on http_502; haproxy's `retries` only covers failed connections
RETRIES_A_502 = {"envoy-l7": True, "haproxy-l7": False, "nginx-l7": True, "waypoint": True}


@pytest.mark.parametrize("name", l7peers.NAMES)
def test_a_502_is_retried_as_configured(name, tmp_path):
    handler = type("Handler", (FailOnce,), {"seen": []})
    app = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    port = _free_port()
    log = open(tmp_path / f"{name}.log", "wb")
    proxy = subprocess.Popen(l7peers.command(name, tmp_path, "127.0.0.1", app.server_address[1], port),
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proxy.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-1000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{name} did not listen within 15 s"
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/x")
        resp = conn.getresponse()
        body = resp.read()
        if RETRIES_A_502[name]:
            assert (resp.status, body, handler.seen) == (200, b"ok", ["/x", "/x"])
        else:
            assert (resp.status, handler.seen) == (502, ["/x"])
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        log.close()
        app.shutdown()
        app.server_close()


def test_a_peer_failure_names_the_proxy_and_shows_its_log(tmp_path):
    from bench.peers import Peer
    from bench.run import _peer_failure
    from trellis.lab.state import Proc

    log = tmp_path / "haproxy-l7.log"
    log.write_text("[NOTICE] starting\n[ALERT] parsing [haproxy-l7.cfg:3]: unknown keyword 'nbthreads'\n")
    peer = Peer("haproxy-l7", "nbthread 1", [Proc(name="haproxy-l7", pid=1, log=str(log), netns="x", cgroup=None)])
    text = _peer_failure(peer, "haproxy-l7 exited before carrying a request")
    assert text.startswith("haproxy-l7: haproxy-l7 exited before carrying a request")
    assert str(log) in text and "unknown keyword 'nbthreads'" in text
