"""`trellis-echo`: the lab's sample app. HTTP mode answers who it is and who it sees as the
client (the address the mesh delivered, which shows whether traffic came through
ztunnel); `--tcp` echoes bytes back for L4 tests.

Knobs, to play a misbehaving backend in L7 tests (outlier detection, retries, timeouts):
`--fail-status 503 [--fail-every N]` answers that status to every Nth request (N=1: all,
2: every other), `--delay S` answers every request S seconds late. `/_echo/config` reads
(GET) and changes (PUT `?fail_status=503&fail_every=2&delay=0.5`; 0 turns a knob off) them
at runtime, and counts the requests served and failed. It answers only the pod itself
(loopback, e.g. `trellis lab exec web-1 -- curl -X PUT ...`): mesh traffic neither reaches
it nor changes the counts.

A request header `X-Echo-Set-Header: Name:value,Name2:value2` makes the answer carry those
response headers (the Gateway API conformance echo's knob, for response header filters)."""
from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 16 * 1024 * 1024
CONTROL_PATH = "/_echo/config"
SET_HEADER = "X-Echo-Set-Header"   # "Name:value,Name2:value2": response headers to add (as echo-basic)


def pod_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


class Behaviour:
    """The knobs and counters (thread-safe: the server answers each connection on a thread)."""

    KNOBS = {"fail_status": int, "fail_every": int, "delay": float}

    def __init__(self, fail_status: int = 0, fail_every: int = 1, delay: float = 0.0):
        self._lock = threading.Lock()
        self.fail_status, self.fail_every, self.delay = 0, 1, 0.0
        self.requests = self.failed = 0
        problem = self.set({"fail_status": fail_status, "fail_every": fail_every, "delay": delay})
        if problem:
            raise ValueError(problem)

    def set(self, values: dict) -> str | None:
        """Change the knobs named in `values` (strings or numbers); the problem, or None."""
        parsed = {}
        for name, raw in values.items():
            kind = self.KNOBS.get(name)
            if kind is None:
                return f"unknown knob {name!r}; knobs: {', '.join(self.KNOBS)}"
            try:
                parsed[name] = kind(raw)
            except (TypeError, ValueError):
                return f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}"
        if parsed.get("fail_status", 0) and not 100 <= parsed["fail_status"] <= 599:
            return f"fail_status={parsed['fail_status']} is not an HTTP status (100-599, 0: off)"
        if parsed.get("fail_every", 1) < 1:
            return f"fail_every={parsed['fail_every']} must be at least 1 (1: every request)"
        if not 0 <= parsed.get("delay", 0) <= 600:
            return f"delay={parsed['delay']} must be 0..600 seconds"
        with self._lock:
            for name, value in parsed.items():
                setattr(self, name, value)
        return None

    def next_request(self) -> tuple[int | None, float]:
        """Count one request: (the status to fail it with, or None; the delay before answering)."""
        with self._lock:
            self.requests += 1
            fail = self.fail_status if self.fail_status and self.requests % self.fail_every == 0 else None
            self.failed += fail is not None
            return fail, self.delay

    def snapshot(self) -> dict:
        with self._lock:
            return {"fail_status": self.fail_status, "fail_every": self.fail_every, "delay": self.delay,
                    "requests": self.requests, "failed": self.failed}


def joined_headers(items) -> dict[str, str]:
    """Header fields by name, the values of a repeated name joined with "," in the order
    received (RFC 9110 5.3), under the name's first spelling: what the app sees."""
    out: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for name, value in items:
        key = spelling.setdefault(name.lower(), name)
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "trellis-echo"
    # the head and the body leave in two writes: with Nagle on, the body waits for the ACK
    # of the head, which a keep-alive peer delays by up to 40 ms (every request after the
    # first on a connection took ~45 ms through the mesh)
    disable_nagle_algorithm = True

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-echo-pod", pod_name())   # who answered, also where the body does not say (POST, PUT)
        for item in (self.headers.get(SET_HEADER) or "").split(","):   # the conformance echo's knob
            name, sep, value = item.partition(":")
            if sep and name.strip():
                self.send_header(name.strip(), value.strip())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _describe(self) -> dict:
        return {"pod": pod_name(), "namespace": os.environ.get("POD_NAMESPACE"),
                "client": f"{self.client_address[0]}:{self.client_address[1]}", "method": self.command,
                "path": self.path, "headers": joined_headers(self.headers.items())}

    def _json(self, status: int, doc: dict) -> None:
        self._reply(status, (json.dumps(doc) + "\n").encode(), "application/json")

    def _control(self) -> bool:
        """Answer /_echo/config; False when the request is for the app."""
        url = urllib.parse.urlsplit(self.path)
        if url.path != CONTROL_PATH:
            return False
        if self.client_address[0] not in ("127.0.0.1", "::1"):
            self._reply(403, f"{CONTROL_PATH} answers only the pod itself (loopback)\n".encode(), "text/plain")
        elif self.command == "PUT":
            query = dict(urllib.parse.parse_qsl(url.query))
            problem = self.server.behaviour.set(query)
            if problem:
                self._reply(400, f"{CONTROL_PATH}: {problem}\n".encode(), "text/plain")
            else:
                self._json(200, self.server.behaviour.snapshot())
        elif self.command in ("GET", "HEAD"):
            self._json(200, self.server.behaviour.snapshot())
        else:
            self._reply(405, f"{CONTROL_PATH}: GET or PUT\n".encode(), "text/plain")
        return True

    def _misbehave(self) -> bool:
        """Apply the knobs; True when the request was answered with the failure status."""
        fail, delay = self.server.behaviour.next_request()
        if delay:
            time.sleep(delay)
        if fail is None:
            return False
        self._reply(fail, f"trellis-echo {pod_name()}: failing with {fail} on purpose (--fail-status)\n".encode(),
                    "text/plain")
        return True

    def do_GET(self) -> None:
        if self._control() or self._misbehave():
            return
        self._json(200, self._describe())

    do_HEAD = do_GET

    def _body(self) -> bytes | None:
        """The request's body; None when its length is refused (and answered: 400 or 413)."""
        try:
            length = int(self.headers.get("content-length", "0"))
        except ValueError:
            self._reply(400, b"content-length must be an integer\n", "text/plain")
            return None
        if length < 0 or length > MAX_BODY:
            self._reply(413, f"body must be 0..{MAX_BODY} bytes\n".encode(), "text/plain")
            return None
        return self.rfile.read(length)

    def _describe_other(self) -> None:
        """DELETE, PATCH, OPTIONS: described like a GET, a body read and dropped (keep-alive)."""
        if self._body() is not None:
            self.do_GET()

    do_DELETE = do_PATCH = do_OPTIONS = _describe_other

    def _echo_body(self) -> None:
        if self._control():
            return
        body = self._body()
        if body is None:
            return
        if self._misbehave():
            return
        self._reply(200, body, self.headers.get("content-type", "application/octet-stream"))

    do_POST = do_PUT = _echo_body

    def log_message(self, fmt: str, *args) -> None:
        sys.stderr.write(f"{self.client_address[0]}:{self.client_address[1]} {fmt % args}\n")


class TcpEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class ThreadingTCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class EchoServer(ThreadingHTTPServer):
    allow_reuse_address = True

    def __init__(self, address, behaviour: Behaviour):
        self.behaviour = behaviour
        super().__init__(address, EchoHandler)


def make_server(host: str, port: int, tcp: bool, behaviour: Behaviour | None = None) -> socketserver.BaseServer:
    if tcp:
        return ThreadingTCP((host, port), TcpEcho)
    return EchoServer((host, port), behaviour or Behaviour())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="trellis-echo", description=__doc__)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--tcp", action="store_true", help="raw TCP echo instead of HTTP")
    ap.add_argument("--fail-status", type=int, default=0, metavar="CODE",
                    help="answer CODE instead (to every --fail-every'th request); 0: never")
    ap.add_argument("--fail-every", type=int, default=1, metavar="N", help="fail every Nth request (default 1: all)")
    ap.add_argument("--delay", type=float, default=0.0, metavar="SECONDS", help="answer every request this late")
    args = ap.parse_args(argv)
    try:
        behaviour = Behaviour(args.fail_status, args.fail_every, args.delay)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        server = make_server(args.host, args.port, args.tcp, behaviour)
    except OSError as exc:
        print(f"trellis-echo: cannot listen on {args.host}:{args.port}: {exc.strerror} "
              f"(is another app using the port in this pod?)", file=sys.stderr)
        return 1
    print(f"trellis-echo {'tcp' if args.tcp else 'http'} listening on {args.host}:{args.port} as {pod_name()}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
