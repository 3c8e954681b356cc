"""trellis-echo, the lab's sample app, run as the lab runs it: its console script."""
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ECHO = str(Path(sys.executable).parent / "trellis-echo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int, deadline_s: float = 10.0) -> socket.socket:
    end = time.monotonic() + deadline_s
    for _ in range(500):
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > end:
                break
            time.sleep(0.02)
    raise AssertionError(f"trellis-echo never listened on {port}")


@contextmanager
def echo(*args):
    port = free_port()
    proc = subprocess.Popen([ECHO, "--host", "127.0.0.1", "--port", str(port), *args],
                            env={**os.environ, "POD_NAME": "web-1", "POD_NAMESPACE": "default"},
                            stderr=subprocess.PIPE)
    try:
        connect(port).close()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


def http(port: int, request: bytes) -> tuple[bytes, bytes, socket.socket]:
    s = connect(port)
    s.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += s.recv(65536)
    return head, body, s


def test_get_describes_pod_and_client():
    with echo() as port:
        head, body, s = http(port, b"GET /hello?x=1 HTTP/1.1\r\nHost: web\r\nX-Test: 1\r\n\r\n")
        with s:
            info = json.loads(body)
            assert head.startswith(b"HTTP/1.1 200")
            assert info["pod"] == "web-1" and info["namespace"] == "default" and info["path"] == "/hello?x=1"
            assert info["client"] == "%s:%d" % s.getsockname()
            assert info["headers"]["X-Test"] == "1"


def test_every_answer_names_the_pod_and_other_methods_are_described():
    with echo() as port:
        head, body, s = http(port, b"POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi")
        with s:
            assert body == b"hi" and b"\r\nx-echo-pod: web-1" in head
        for method in (b"DELETE", b"PATCH", b"OPTIONS"):
            head, body, s = http(port, method + b" /x HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc")
            with s:
                s.sendall(b"GET /next HTTP/1.1\r\nHost: web\r\n\r\n")   # the body was consumed: keep-alive holds
                info = json.loads(body)
                assert head.startswith(b"HTTP/1.1 200") and info["method"] == method.decode() and info["path"] == "/x"
                data = b""
                while b"/next" not in data and (chunk := s.recv(65536)):
                    data += chunk
                assert b'"path": "/next"' in data


def test_set_header_knob_adds_response_headers():
    with echo() as port:
        head, body, s = http(port, b"GET / HTTP/1.1\r\nHost: web\r\nX-Echo-Set-Header: X-A:1, X-B:two,bad\r\n\r\n")
        with s:
            lines = head.decode().split("\r\n")
            assert "X-A: 1" in lines and "X-B: two" in lines and json.loads(body)["pod"] == "web-1"


def test_a_repeated_header_is_reported_with_its_values_joined_in_order():
    with echo() as port:
        head, body, s = http(port, b"GET / HTTP/1.1\r\nHost: web\r\nX-Add: one\r\nx-add: two\r\n"
                                   b"X-Other: 3\r\n\r\n")
        with s:
            headers = json.loads(body)["headers"]
            assert headers["X-Add"] == "one,two" and "x-add" not in headers and headers["X-Other"] == "3"


def test_post_echoes_body_and_keeps_alive():
    with echo() as port:
        payload = bytes(range(256)) * 100
        req = b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Type: application/x-test\r\nContent-Length: %d\r\n\r\n" % len(payload)
        head, body, s = http(port, req + payload)
        with s:
            assert body == payload and b"application/x-test" in head
            s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")   # same connection still usable
            assert s.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("length,status", [(b"abc", b"400"), (b"99999999999", b"413")])
def test_bad_content_length(length, status):
    with echo() as port:
        s = connect(port)
        with s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: " + length + b"\r\n\r\n")
            assert s.recv(65536).split()[1] == status


def test_tcp_mode_echoes_bytes():
    with echo("--tcp") as port:
        with connect(port) as s:
            blob = os.urandom(200_000)
            s.sendall(blob)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            assert got == blob


def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run([ECHO, "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in res.stderr


def status_of(port: int, method: str = "GET", path: str = "/") -> tuple[int, bytes]:
    head, body, s = http(port, f"{method} {path} HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n".encode())
    s.close()
    return int(head.split()[1]), body


def test_fail_every_other_request_and_count_them():
    with echo("--fail-status", "503", "--fail-every", "2") as port:
        got = [status_of(port, method)[0] for method in ("GET", "GET", "POST", "GET")]
        assert got == [200, 503, 200, 503]
        config = json.loads(status_of(port, path="/_echo/config")[1])
        assert config == {"fail_status": 503, "fail_every": 2, "delay": 0.0, "requests": 4, "failed": 2}


def test_knobs_change_at_runtime_from_the_pod_only():
    with echo() as port:
        assert status_of(port)[0] == 200
        code, body = status_of(port, "PUT", "/_echo/config?fail_status=502")
        assert code == 200 and json.loads(body)["fail_status"] == 502
        assert status_of(port)[0] == 502 and status_of(port)[0] == 502
        assert status_of(port, "PUT", "/_echo/config?fail_status=0")[0] == 200
        assert status_of(port)[0] == 200
        # the control requests are not counted: 4 app requests, 2 failed
        assert json.loads(status_of(port, path="/_echo/config")[1])["failed"] == 2
        for bad, why in (("fail_status=700", b"not an HTTP status"), ("fail_every=0", b"at least 1"),
                         ("delay=x", b"not a number"), ("colour=red", b"unknown knob 'colour'")):
            code, body = status_of(port, "PUT", f"/_echo/config?{bad}")
            assert code == 400 and why in body, (bad, body)


def test_control_refused_to_other_addresses():
    host = "127.0.0.2"   # any address but the pod's own 127.0.0.1 (mesh traffic arrives from pod IPs)
    port = free_port()
    proc = subprocess.Popen([ECHO, "--host", "0.0.0.0", "--port", str(port)], stderr=subprocess.PIPE)
    try:
        connect(port).close()
        with socket.create_connection((host, port), timeout=5, source_address=(host, 0)) as s:
            s.sendall(b"PUT /_echo/config?fail_status=503 HTTP/1.1\r\nHost: w\r\nContent-Length: 0\r\n\r\n")
            assert s.recv(65536).split()[1] == b"403"
        assert status_of(port)[0] == 200   # unchanged
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


def test_delay_holds_the_answer():
    with echo("--delay", "0.3") as port:
        start = time.monotonic()
        assert status_of(port)[0] == 200
        assert time.monotonic() - start >= 0.3   # a lower bound only: never flaky under load


def test_bad_knob_on_the_command_line():
    res = subprocess.run([ECHO, "--fail-every", "0"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "fail_every=0 must be at least 1" in res.stderr
