"""The HTTP/1.1 wire format, strict and fast (pure functions, no state): a message head is
found with one `bytes.find(b"\\r\\n\\r\\n")`, checked whole with one compiled regex and split
once; the framing headers are read in the same pass. h1.py drives these per connection.

Strict where RFC 9112 lets a recipient choose, because the next hop might choose the other
way (request smuggling): bare LF or CR, obsolete line folding, control characters in a
field value, whitespace before the colon, a second or conflicting Content-Length, any
Transfer-Encoding but `chunked`, and Content-Length together with Transfer-Encoding are all
refused. Everything h11 (the reference these are fuzzed against) accepts the same way
parses the same here. A refusal is `WireError(status, message)`; nothing else is raised on
a peer's bytes.
"""
from __future__ import annotations

import re

_TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VALUE = r"[\t\x20-\x7e\x80-\xff]*"           # RFC 9110 5.5 field-value chars (OWS stripped after)
_FIELDS = rf"((?:\r\n{_TOKEN}:{_VALUE})*)"
# Heads are decoded as latin-1 (one byte, one char) before matching: one decode per message.
REQUEST_HEAD = re.compile(rf"({_TOKEN}) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9]){_FIELDS}")
STATUS_HEAD = re.compile(rf"HTTP/([0-9]\.[0-9]) ([0-9]{{3}})(?: ([\t\x20-\x7e\x80-\xff]*))?{_FIELDS}")
TRAILERS = re.compile(rf"{_TOKEN}:{_VALUE}(?:\r\n{_TOKEN}:{_VALUE})*")
CHUNK_HEAD = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?[ \t]*")
AUTHORITY = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*")
_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_CHUNK_LINE = 4096
Fields = list  # [(lowercase name, value)], wire order (a Head keeps them as a tuple)


class WireError(Exception):
    """The peer broke HTTP/1.1: answer `status` (400, 431, 501) if possible, then close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Head:
    """A parsed request or response head with its framing already worked out."""
    __slots__ = ("method", "target", "version", "status", "reason", "fields", "length", "chunked", "close",
                 "host", "expect_continue")

    def __init__(self):
        self.method = self.target = self.reason = ""
        self.status = 0
        self.length: int | None = None
        self.chunked = self.close = self.expect_continue = False
        self.host: str | None = None


def find_head(buf: bytes, start: int, limit: int) -> int:
    """Where the head starting at `start` ends (index of its blank line), -1 if more is needed."""
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buf) - start > limit:
            raise WireError(431, f"header block over {limit} bytes (Receive buffer too long)")
        if start < len(buf) and buf[start] < 0x21:
            raise WireError(400, "malformed HTTP/1.1: the message starts with whitespace or a control character")
        _refuse_bare(buf[start:])
        return -1
    if end - start + 4 > limit:
        raise WireError(431, f"header fields too large ({end - start + 4} bytes, at most {limit})")
    return end


def _refuse_bare(data: bytes) -> None:
    """A lone CR or LF: a line ending the next hop might read differently. Refused at once,
    also while the head is incomplete (a client ending lines with LF would otherwise wait)."""
    lf = data.count(b"\n")
    if lf != data.count(b"\r\n") or data.count(b"\r") - (data.endswith(b"\r")) != lf:
        raise WireError(400, "malformed HTTP/1.1: bare CR or LF in the head (lines end with CRLF)")


def parse_request(buf: bytes, start: int, end: int, max_fields: int) -> Head:
    return _parse(buf, start, end, max_fields, True)


def parse_response(buf: bytes, start: int, end: int, max_fields: int) -> Head:
    return _parse(buf, start, end, max_fields, False)


# Heads parsed lately, by their bytes: a kept-alive client or backend sends the same head over
# and over (a backend's Date changes once a second), and a Head is a pure function of its bytes
# (never changed after parsing: its fields are a tuple). Small heads only; emptied when full.
_SEEN: dict[tuple, Head] = {}
SEEN_HEADS, SEEN_HEAD_BYTES = 256, 2048


def _parse(buf: bytes, start: int, end: int, max_fields: int, request: bool) -> Head:
    raw = buf[start:end]
    key = (raw, max_fields, request)
    h = _SEEN.get(key)
    if h is not None:
        return h
    h = _parse_new(raw.decode("latin-1"), max_fields, request)
    if len(raw) <= SEEN_HEAD_BYTES:
        if len(_SEEN) >= SEEN_HEADS:
            _SEEN.clear()
        _SEEN[key] = h
    return h


def _parse_new(text: str, max_fields: int, request: bool) -> Head:
    m = (REQUEST_HEAD if request else STATUS_HEAD).fullmatch(text)
    if m is None:
        raise WireError(400, "malformed HTTP/1.1: " + _diagnose(text, "request" if request else "status"))
    h = Head()
    if request:
        h.method, h.target, h.version = m.group(1), m.group(2), m.group(3)
    else:
        h.version, h.status, h.reason = m.group(1), int(m.group(2)), m.group(3) or ""
    h.fields = tuple(_fields(m.group(4), max_fields))
    _framing(h, request)
    return h


def parse_trailers(text: str, max_fields: int) -> Fields:
    if not TRAILERS.fullmatch(text):
        raise WireError(400, "malformed HTTP/1.1: " + _diagnose("x\r\n" + text, "trailer"))
    fields = _fields("\r\n" + text, max_fields)
    for name, _ in fields:
        # RFC 9110 6.5.1: framing cannot arrive after the content; a hop that merged such a
        # trailer into the head would reframe the message (a smuggling vector), so refuse it.
        if name in FRAMING_TRAILERS:
            raise WireError(400, f"malformed HTTP/1.1: a {name} field in the trailers")
    return fields


FRAMING_TRAILERS = frozenset(("content-length", "transfer-encoding", "host"))


def _fields(block: str, max_fields: int) -> Fields:
    if not block:
        return []
    lines = block.split("\r\n")
    if len(lines) - 1 > max_fields:
        raise WireError(431, f"too many header fields ({len(lines) - 1}, at most {max_fields})")
    out = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        out.append((name.lower(), value.strip(" \t")))
    return out


def _framing(h: Head, request: bool) -> None:
    """Content-Length, Transfer-Encoding, Host, Connection and Expect, checked in one pass."""
    lengths = te = hosts = 0
    for name, value in h.fields:
        c = name[0]
        if c == "c":
            if name == "content-length":
                lengths += 1
                h.length = _content_length(value, h.length)
            elif name == "connection" and "close" in value.lower():
                h.close = h.close or any(t.strip() == "close" for t in value.lower().split(","))
        elif c == "t" and name == "transfer-encoding":
            te += 1
            if te > 1:
                raise WireError(400, "more than one Transfer-Encoding field: refused (request smuggling)")
            if value.lower() != "chunked":
                raise WireError(501, f"Only Transfer-Encoding: chunked is supported, not {value[:40]!r}")
            h.chunked = True
        elif c == "h" and name == "host":
            hosts += 1
            h.host = value
        elif c == "e" and name == "expect":
            h.expect_continue = value.lower() == "100-continue"
    if lengths and te:
        raise WireError(400, "both Content-Length and Transfer-Encoding: refused (request smuggling)")
    if h.version != "1.1":
        h.close = True   # HTTP/1.0 and other versions: one exchange per connection (as h11)
    if request:
        if hosts > 1:
            raise WireError(400, "Found multiple Host: headers")
        if h.host is None:
            if h.version == "1.1":
                raise WireError(400, "Missing mandatory Host: header")
        elif not AUTHORITY.fullmatch(h.host):   # RFC 9112 3.2: an invalid Host gets 400
            raise WireError(400, f"invalid Host header {h.host[:64]!r}")


def _content_length(value: str, previous: int | None) -> int:
    """RFC 9110 8.6: digits; a list of identical values (`5, 5`) or a repeated identical
    field is one value (as h11); anything else is refused."""
    if value.isdigit() and value.isascii() and len(value) <= 19:   # the usual single value, as the regex reads it
        n = int(value)
        if previous is not None and previous != n:
            raise WireError(400, "conflicting Content-Length headers")
        return n
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(v := values.pop()):
        raise WireError(400, f"bad Content-Length {value[:40]!r}" if len(values) <= 1 else
                        "conflicting Content-Length headers")
    n = int(v)
    if previous is not None and previous != n:
        raise WireError(400, "conflicting Content-Length headers")
    return n


def _diagnose(text: str, what: str) -> str:
    """Why a head did not match (the error path only, so it may be slow)."""
    lines = text.split("\r\n")
    if what != "trailer" and not (REQUEST_HEAD if what == "request" else STATUS_HEAD).fullmatch(lines[0]):
        return f"illegal {what} line {lines[0][:80]!r}"
    for line in lines[1:]:
        if re.fullmatch(f"{_TOKEN}:{_VALUE}", line):
            continue
        if line[:1] in (" ", "\t"):
            return f"obsolete line folding (a field line starting with whitespace): {line[:80]!r}"
        if "\r" in line or "\n" in line:
            return f"bare CR or LF in field line {line[:80]!r}"
        name, colon, _ = line.partition(":")
        if not colon or not re.fullmatch(_TOKEN, name):
            return f"illegal header line {line[:80]!r} (field name not a token, or whitespace before the colon)"
        return f"control character in field value of {name[:40]!r}"
    return "illegal head"


def parse_chunk_head(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(chunk size, where its data starts) for the chunk line at `pos`; None if more is needed."""
    end = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
    if end < 0:
        if len(buf) - pos >= MAX_CHUNK_LINE:
            raise WireError(400, "malformed HTTP/1.1: chunk size line too long")
        if b"\n" in buf[pos:] or b"\r" in buf[pos:len(buf) - 1]:
            raise WireError(400, "malformed HTTP/1.1: bare CR or LF in a chunk size line")
        return None
    m = CHUNK_HEAD.fullmatch(buf, pos, end)
    if m is None:
        raise WireError(400, f"malformed HTTP/1.1: bad chunk size line {buf[pos:end][:40]!r}")
    return int(m.group(1), 16), end + 2


def serialize_head(first: str, fields) -> bytes:
    if not fields:
        return (first + "\r\n\r\n").encode("latin-1")
    # ": ".join of each (name, value) pair: the loop runs in C
    return (first + "\r\n" + "\r\n".join(map(": ".join, fields)) + "\r\n\r\n").encode("latin-1")
