"""`trellis-echo`: the lab's sample app. HTTP mode answers who it is and who it sees as the
client (the address the mesh delivered, which shows whether traffic came through
ztunnel); `--tcp` echoes bytes back for L4 tests.

Misbehaviour on purpose, for the waypoint's tests (retries, outlier detection, timeouts):
`--fail-every N` answers the Nth, 2Nth, ... request with `--fail-status` (default 503; N=1:
every request), counted across all connections in arrival order; `--delay S` waits S seconds
before answering. Every request is logged on stderr (one line), so a test can count what the
backend really received."""
from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 16 * 1024 * 1024


def pod_name() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "trellis-echo"

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _describe(self) -> dict:
        return {"pod": pod_name(), "namespace": os.environ.get("POD_NAMESPACE"),
                "client": f"{self.client_address[0]}:{self.client_address[1]}", "method": self.command,
                "path": self.path, "headers": dict(self.headers.items())}

    def _misbehave(self) -> int | None:
        """The status to fail this request with (after the configured delay), or None."""
        server = self.server
        with server.lock:
            server.count += 1
            n = server.count
        if server.delay > 0:
            time.sleep(server.delay)
        if server.fail_every and n % server.fail_every == 0:
            return server.fail_status
        return None

    def do_GET(self) -> None:
        status = self._misbehave() or 200
        self._reply(status, (json.dumps(self._describe()) + "\n").encode(), "application/json")

    do_HEAD = do_DELETE = do_GET   # DELETE too: method-matching tests see who answered

    def _echo_body(self) -> None:
        try:
            length = int(self.headers.get("content-length", "0"))
        except ValueError:
            return self._reply(400, b"content-length must be an integer\n", "text/plain")
        if length < 0 or length > MAX_BODY:
            return self._reply(413, f"body must be 0..{MAX_BODY} bytes\n".encode(), "text/plain")
        body = self.rfile.read(length)
        if failed := self._misbehave():
            return self._reply(failed, (json.dumps(self._describe()) + "\n").encode(), "application/json")
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
    daemon_threads = True

    def __init__(self, address, fail_every: int = 0, fail_status: int = 503, delay: float = 0.0):
        super().__init__(address, EchoHandler)
        self.fail_every, self.fail_status, self.delay = fail_every, fail_status, delay
        self.lock = threading.Lock()
        self.count = 0   # requests received, in arrival order (what --fail-every counts)


def make_server(host: str, port: int, tcp: bool, fail_every: int = 0, fail_status: int = 503,
                delay: float = 0.0) -> socketserver.BaseServer:
    if tcp:
        return ThreadingTCP((host, port), TcpEcho)
    return EchoServer((host, port), fail_every, fail_status, delay)


def _bounded(kind, low, high=float("inf")):
    def parse(text: str):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be >= {low}{f' and <= {high}' if high != float('inf') else ''}, "
                                             f"got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="trellis-echo", description=__doc__)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--tcp", action="store_true", help="raw TCP echo instead of HTTP")
    ap.add_argument("--fail-every", type=_bounded(int, 0), default=0, metavar="N",
                    help="answer every Nth request with --fail-status (1: all of them; 0: never)")
    ap.add_argument("--fail-status", type=_bounded(int, 400, 599), default=503, metavar="CODE",
                    help="the status of a failed request (400-599, default 503)")
    ap.add_argument("--delay", type=_bounded(float, 0), default=0.0, metavar="SECONDS",
                    help="wait this long before answering each request")
    args = ap.parse_args(argv)
    try:
        server = make_server(args.host, args.port, args.tcp, args.fail_every, args.fail_status, args.delay)
    except OSError as exc:
        print(f"trellis-echo: cannot listen on {args.host}:{args.port}: {exc.strerror} "
              f"(is another app using the port in this pod?)", file=sys.stderr)
        return 1
    quirks = "".join([f", failing every {args.fail_every}th request with {args.fail_status}" if args.fail_every else "",
                      f", answering after {args.delay:g}s" if args.delay else ""])
    print(f"trellis-echo {'tcp' if args.tcp else 'http'} listening on {args.host}:{args.port} as {pod_name()}{quirks}",
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
