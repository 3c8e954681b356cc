"""Clients the l7guard tests run INSIDE lab pods (`trellis lab exec POD -- python podclient.py
MODE ...`), so that their traffic is captured by the pod's ztunnel like an app's. Standalone
(stdlib, h2, grpcio): no test package imports. Each mode prints one JSON document.

  paced URL --rate R --duration S     GETs at R/s on a keep-alive connection; every answer's
                                      send time and status, and one 200 and one 429 head
  loop URL --duration S [--keepalive] GETs on a fresh connection each (or one kept alive);
                                      failures, statuses, the client address the app saw
  attack HOST PORT                    smuggling, oversized headers and an HTTP/2 rapid-reset
                                      flood; what the server answered to each
  grpc TARGET METHOD COUNT            unary calls with grpcio; replies or status codes
  grpcloop TARGET METHOD --duration S calls on one channel; failures, the caller address seen
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time


def paced(url: str, rate: float, duration: float) -> dict:
    host, _, path = url.removeprefix("http://").partition("/")
    path = "/" + path
    conn, out, heads, errors = None, [], {}, []
    start = time.monotonic()
    n = 0
    while (due := start + n / rate) < start + duration:
        # an absolute schedule: a slow answer is caught up at once, not carried forward
        time.sleep(max(0.0, due - time.monotonic()))
        t = time.monotonic() - start
        n += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, timeout=5)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            out.append([round(t, 4), resp.status])
            heads.setdefault(str(resp.status), dict((k.lower(), v) for k, v in resp.getheaders()))
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            errors.append([round(t, 4), repr(exc)])
            if conn is not None:
                conn.close()
            conn = None
    return {"results": out, "heads": heads, "errors": errors}


def loop(url: str, duration: float, interval: float, keepalive: bool) -> dict:
    host, _, path = url.removeprefix("http://").partition("/")
    seen, failures, statuses, pods, conns = [], [], {}, {}, 0
    start = time.monotonic()
    conn = None
    print("started", file=sys.stderr, flush=True)   # the loop runs: tests time their change from here
    while (t := time.monotonic() - start) < duration:
        if conn is None:
            conn, conns = http.client.HTTPConnection(host, timeout=5), conns + 1
        try:
            conn.request("GET", "/" + path)
            resp = conn.getresponse()
            body = resp.read()
            statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            if resp.status != 200:
                failures.append([round(t, 3), f"status {resp.status}: {body[:200]!r}"])
            else:
                doc = json.loads(body)
                pods[doc["pod"]] = pods.get(doc["pod"], 0) + 1
                client = doc["client"].rsplit(":", 1)[0]
                if not seen or seen[-1][0] != client:
                    seen.append([client, round(t, 3), 0])
                seen[-1][2] += 1
            if not keepalive or resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # no retry, not even of a reused connection the server closed: a server that
            # goes away must say `connection: close` first
            failures.append([round(t, 3), repr(exc)])
            conn.close()
            conn = None
        time.sleep(interval)
    return {"statuses": statuses, "failures": failures, "clients": seen, "pods": pods, "connections": conns,
            "requests": sum(statuses.values()) + sum(1 for f in failures if not f[1].startswith("status"))}


def _exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> dict:
    """Send raw bytes, read until the server closes (or stops talking)."""
    got = b""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                got += chunk
            closed = True
        except socket.timeout:
            closed = False
        except ConnectionResetError:
            closed = True
    statuses = [line.split()[1].decode() for line in got.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    return {"statuses": statuses, "closed": closed, "bytes": len(got), "head": got[:300].decode("latin-1")}


def goaways(data: bytes) -> list[int]:
    """The error codes of the GOAWAY frames in a server's HTTP/2 byte stream. Framed by hand:
    h2's client state machine stops parsing at the first frame it dislikes in a flood (a
    frame for a stream it reset), losing what follows."""
    codes, i = [], 0
    while i + 9 <= len(data):
        length, kind = int.from_bytes(data[i:i + 3], "big"), data[i + 3]
        if kind == 0x7 and i + 9 + 8 <= len(data):
            codes.append(int.from_bytes(data[i + 13:i + 17], "big"))
        i += 9 + length
    return codes


def rapid_reset(host: str, port: int, streams: int) -> dict:
    """Open and at once reset `streams` HTTP/2 streams (CVE-2023-44487), as fast as the
    socket takes them, reading what the server says in between (a GOAWAY must not be lost
    to the reset our later writes would cause); then see whether it said GOAWAY and closed."""
    import select

    import h2.config
    import h2.connection
    import h2.errors
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sent, got, ended, t0 = 0, b"", None, time.monotonic()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(conn.data_to_send())
        try:
            for _ in range(streams):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                        (":authority", host)], end_stream=True)
                conn.reset_stream(sid)
                s.sendall(conn.data_to_send())
                sent += 1
                while not ended and select.select([s], [], [], 0)[0]:
                    data = s.recv(65536)
                    got += data
                    ended = None if data else "eof"
                if ended or goaways(got):
                    break
        except OSError as exc:
            # the server closed while we were still writing (EPIPE, or ECONNRESET once its
            # kernel answered our late frames with RST); what it sent before closing, the
            # GOAWAY included, is still queued on our socket: read it below
            ended = f"while sending: {exc!r}"
        s.settimeout(5)
        try:
            while data := s.recv(65536):
                got += data
            ended = ended or "eof"
        except ConnectionResetError:
            ended = ended or "reset"
        except socket.timeout:
            pass
    codes = goaways(got)
    return {"sent": sent, "goaway": h2.errors.ErrorCodes(codes[0]).name if codes else None,
            "closed": ended is not None, "ended": ended, "received": len(got),
            "seconds": round(time.monotonic() - t0, 3)}


def attack(host: str, port: int, streams: int, floods: int) -> dict:
    req = f"Host: {host}\r\n".encode()
    return {
        # CL.TE: a front end that trusted Content-Length would pass the second request on
        "cl_te": _exchange(host, port, b"POST / HTTP/1.1\r\n" + req + b"Content-Length: 6\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + req + b"\r\n"),
        "te_cl": _exchange(host, port, b"POST / HTTP/1.1\r\n" + req + b"Transfer-Encoding: chunked\r\n"
                           b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        "dup_cl": _exchange(host, port, b"POST / HTTP/1.1\r\n" + req + b"Content-Length: 5\r\n"
                            b"Content-Length: 30\r\n\r\nhello" + b"GET /smuggled HTTP/1.1\r\n" + req + b"\r\n"),
        "big_header": _exchange(host, port, b"GET / HTTP/1.1\r\n" + req + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n"),
        "many_headers": _exchange(host, port, b"GET / HTTP/1.1\r\n" + req +
                                  b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n"),
        "rapid_reset": [rapid_reset(host, port, streams) for _ in range(floods)],
    }


def grpc_calls(target: str, method: str, count: int) -> dict:
    import grpc
    replies, errors = [], []
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        for i in range(count):
            try:
                replies.append(json.loads(call(f"n{i}".encode(), timeout=10)))
            except grpc.RpcError as exc:
                errors.append([i, exc.code().name, exc.details()])
    return {"replies": replies, "errors": errors}


def grpc_loop(target: str, method: str, duration: float, interval: float) -> dict:
    """Calls on one channel (grpcio reconnects on its own after a GOAWAY): failures, and the
    caller address the server saw, in order."""
    import grpc
    seen, failures, ok = [], [], 0
    start = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        print("started", file=sys.stderr, flush=True)
        while (t := time.monotonic() - start) < duration:
            try:
                peer = json.loads(call(b"loop", timeout=5))["peer"].rsplit(":", 1)[0].removeprefix("ipv4:")
                ok += 1
                if not seen or seen[-1][0] != peer:
                    seen.append([peer, round(t, 3), 0])
                seen[-1][2] += 1
            except grpc.RpcError as exc:
                failures.append([round(t, 3), exc.code().name, exc.details()])
            time.sleep(interval)
    return {"ok": ok, "failures": failures, "clients": seen}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("paced")
    p.add_argument("url"), p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p = sub.add_parser("loop")
    p.add_argument("url"), p.add_argument("--duration", type=float, required=True)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--keepalive", action="store_true", help="one connection while the server keeps it open")
    p = sub.add_parser("attack")
    p.add_argument("host"), p.add_argument("port", type=int), p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--floods", type=int, default=3, help="rapid-reset connections, one after another")
    p = sub.add_parser("grpc")
    p.add_argument("target"), p.add_argument("method"), p.add_argument("count", type=int)
    p = sub.add_parser("grpcloop")
    p.add_argument("target"), p.add_argument("method"), p.add_argument("--duration", type=float, required=True)
    p.add_argument("--interval", type=float, default=0.02)
    a = ap.parse_args()
    if a.mode == "paced":
        out = paced(a.url, a.rate, a.duration)
    elif a.mode == "loop":
        out = loop(a.url, a.duration, a.interval, a.keepalive)
    elif a.mode == "attack":
        out = attack(a.host, a.port, a.streams, a.floods)
    elif a.mode == "grpc":
        out = grpc_calls(a.target, a.method, a.count)
    else:
        out = grpc_loop(a.target, a.method, a.duration, a.interval)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
