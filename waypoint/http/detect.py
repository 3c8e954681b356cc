"""Which protocol a tunnel carries, from its first bytes (Istio's protocol sniffing, sans-IO):
the HTTP/2 connection preface (prior knowledge, gRPC included), an HTTP/1.x request line, or
anything else, which the waypoint forwards as plain L4. A server-first protocol sends nothing:
the caller's sniffing timeout then calls `detect(data, final=True)`, which says L4.
"""
from __future__ import annotations

import re

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2, HTTP1, L4 = "h2", "http/1.1", "l4"
MAX_SNIFF = 8 * 1024       # a longer request line is still HTTP/1 (h11 answers 431/400 to it)
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_LINE = re.compile(rb"^" + _TOKEN + rb"{1,32} [^\x00-\x20\x7f]+ HTTP/1\.[01]\r?$")
_METHOD = re.compile(b"^" + _TOKEN + b"{1,32}$")
_TARGET = re.compile(rb"^[^\x00-\x20\x7f]*$")


def detect(data: bytes, final: bool = False) -> str | None:
    """HTTP2, HTTP1, L4, or None when more bytes are needed to tell."""
    if not data:
        return L4 if final else None
    if data[:len(H2_PREFACE)] == H2_PREFACE[:len(data)]:
        if len(data) >= len(H2_PREFACE):
            return HTTP2
        return L4 if final else None
    line, newline, _ = data.partition(b"\n")
    if newline:
        return HTTP1 if _LINE.match(line) else L4
    if not _partial_request_line(data):
        return L4
    if len(data) > MAX_SNIFF:
        return HTTP1
    return L4 if final else None


def _partial_request_line(data: bytes) -> bool:
    """Could `data` still grow into `METHOD SP target SP HTTP/1.x CR`?"""
    method, sp, rest = data.partition(b" ")
    if not _METHOD.match(method):
        return False
    target, sp2, version = rest.partition(b" ")
    if not _TARGET.match(target):
        return False
    return not sp2 or b"HTTP/1.1\r".startswith(version) or b"HTTP/1.0\r".startswith(version)
