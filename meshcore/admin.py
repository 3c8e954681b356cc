"""A tiny HTTP/1.1 server for admin, readiness and metrics endpoints (trio + h11), and the
matching synchronous GET the CLI uses, able to reach node-local ports inside a netns."""
from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import h11
import trio

from . import netns as _netns

log = logging.getLogger("trellis.admin")
MAX_REQUEST = 64 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Response:
    body: Any = b""
    status: int = 200
    content_type: str | None = None

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, (dict, list)):
            return (json.dumps(self.body, indent=2, default=str) + "\n").encode(), self.content_type or "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type or "text/plain; charset=utf-8"
        return bytes(self.body), self.content_type or "application/octet-stream"


Handler = Callable[[Request], Awaitable[Response]]


async def _handle(stream: trio.SocketStream, routes: dict[str, Handler]) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    try:
        with trio.move_on_after(30):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    break
                return
            target = event.target.decode("latin-1")
            path, _, query = target.partition("?")
            req = Request(event.method.decode(), path, query,
                          {k.decode().lower(): v.decode("latin-1") for k, v in event.headers})
            handler = routes.get(path)
            if handler is None:
                resp = Response({"error": f"no such endpoint {path}", "endpoints": sorted(routes)}, 404)
            elif req.method not in ("GET", "HEAD"):
                resp = Response({"error": "only GET is supported"}, 405)
            else:
                try:
                    resp = await handler(req)
                except Exception as exc:  # an admin bug must not take the component down
                    log.exception("admin handler %s failed", path)
                    resp = Response({"error": f"{type(exc).__name__}: {exc}"}, 500)
            body, ctype = resp.encode()
            out = conn.send(h11.Response(status_code=resp.status, headers=[
                ("content-type", ctype), ("content-length", str(len(body))), ("connection", "close")]))
            out += conn.send(h11.Data(data=body)) if req.method != "HEAD" else b""
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("admin client error: %s", exc)
    finally:
        await trio.aclose_forcefully(stream)


async def open_listener(host: str, port: int, netns_fd: int | None = None) -> trio.SocketListener:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if netns_fd is not None:
        raw = _netns.socket_in(netns_fd, family)
    else:
        raw = socket.socket(family, socket.SOCK_STREAM)
    sock = trio.socket.from_stdlib_socket(raw)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        await sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind admin endpoint {host}:{port}: {exc.strerror} "
                                 f"(is another instance already running?)") from None
    sock.listen(128)
    return trio.SocketListener(sock)


async def serve_http(host: str, port: int, routes: dict[str, Handler], *,
                     netns_fd: int | None = None, listener: trio.SocketListener | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `routes` (exact paths) until cancelled. Pass an already bound `listener` to
    bind first and serve later (bind errors surface at start-up)."""
    listener = listener or await open_listener(host, port, netns_fd)
    task_status.started(listener)
    await trio.serve_listeners(lambda s: _handle(s, routes), [listener])


def http_get(host: str, port: int, path: str, *, netns: str | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
    """Blocking GET (for the CLI and the lab). `netns` names a netns to create the socket in."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if netns:
        with _netns.entered_named(netns):
            sock = socket.socket(family, socket.SOCK_STREAM)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        conn = h11.Connection(h11.CLIENT)
        sock.sendall(conn.send(h11.Request(method="GET", target=path,
                                           headers=[("host", f"{host}:{port}"), ("connection", "close")])))
        sock.sendall(conn.send(h11.EndOfMessage()))
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, bytes(body)


def get_json(host: str, port: int, path: str, **kw) -> Any:
    status, body = http_get(host, port, path, **kw)
    if status != 200:
        raise RuntimeError(f"GET http://{host}:{port}{path} answered {status}: {body[:200]!r}")
    return json.loads(body)
