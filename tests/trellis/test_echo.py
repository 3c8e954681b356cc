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


def test_delete_describes_too():
    with echo() as port:
        head, body, s = http(port, b"DELETE /items/1 HTTP/1.1\r\nHost: web\r\n\r\n")
        with s:
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["method"] == "DELETE"


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


def get_status(port: int, path: bytes = b"/") -> tuple[int, dict]:
    head, body, s = http(port, b"GET " + path + b" HTTP/1.1\r\nHost: web\r\n\r\n")
    s.close()
    return int(head.split()[1]), json.loads(body)


def test_fail_every_answers_every_nth_request_with_the_status_and_still_describes_itself():
    with echo("--fail-every", "2", "--fail-status", "502") as port:
        got = [get_status(port, b"/r%d" % i) for i in range(6)]
    assert [status for status, _ in got] == [200, 502, 200, 502, 200, 502]
    assert all(info["pod"] == "web-1" for _, info in got)   # a failure still says who answered


def test_fail_every_one_fails_all_and_posts_count_too():
    with echo("--fail-every", "1") as port:
        assert get_status(port)[0] == 503
        head, body, s = http(port, b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\nabc")
        with s:
            assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["method"] == "POST"
            s.sendall(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n")   # the body was consumed: the connection goes on
            assert s.recv(65536).startswith(b"HTTP/1.1 503")


def test_delay_holds_the_answer_back():
    with echo("--delay", "0.5") as port:
        start = time.monotonic()
        assert get_status(port)[0] == 200
        assert time.monotonic() - start >= 0.5   # a lower bound only: load can only make it later


@pytest.mark.parametrize("args,message", [(["--fail-every", "-1"], "must be >= 0"),
                                          (["--delay", "-2"], "must be >= 0"),
                                          (["--fail-status", "200"], "must be >= 400 and <= 599")])
def test_bad_knobs_are_refused_naming_the_flag(args, message):
    res = subprocess.run([ECHO, *args], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and message in res.stderr and args[0] in res.stderr, res.stderr
