"""`trellis-echo`: the lab's sample app. HTTP mode answers who it is and who it sees as the
client (the address the mesh delivered, which shows whether traffic came through
ztunnel); `--tcp` echoes bytes back for L4 tests."""
from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
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

    def do_GET(self) -> None:
        self._reply(200, (json.dumps(self._describe()) + "\n").encode(), "application/json")

    do_HEAD = do_GET

    def _echo_body(self) -> None:
        try:
            length = int(self.headers.get("content-length", "0"))
        except ValueError:
            return self._reply(400, b"content-length must be an integer\n", "text/plain")
        if length < 0 or length > MAX_BODY:
            return self._reply(413, f"body must be 0..{MAX_BODY} bytes\n".encode(), "text/plain")
        body = self.rfile.read(length)
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


def make_server(host: str, port: int, tcp: bool) -> socketserver.BaseServer:
    if tcp:
        return ThreadingTCP((host, port), TcpEcho)
    ThreadingHTTPServer.allow_reuse_address = True
    return ThreadingHTTPServer((host, port), EchoHandler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="trellis-echo", description=__doc__)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--tcp", action="store_true", help="raw TCP echo instead of HTTP")
    args = ap.parse_args(argv)
    try:
        server = make_server(args.host, args.port, args.tcp)
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
