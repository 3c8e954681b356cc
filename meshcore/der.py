"""The few X.509 facts the data plane needs, read from DER without `cryptography` (sans-IO).

ztunnel runs on every node for as long as the node does, and importing `cryptography`
costs it about 10 MiB of resident memory; all it needs from a certificate is the serial
number, the validity window and the URI SANs (RFC 5280 4.1, 4.2.1.6). Signatures and
chains are verified by OpenSSL inside `ssl`, never here: this reader trusts nothing it
returns for authentication except what the TLS handshake already verified.

Malformed input raises `DerError` (a ValueError) saying what is wrong and where.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from dataclasses import dataclass

# universal tags, and the context-specific ones RFC 5280 uses in a certificate
BOOLEAN, INTEGER, OCTET_STRING, OID, UTC_TIME, GENERALIZED_TIME, SEQUENCE = 0x01, 0x02, 0x04, 0x06, 0x17, 0x18, 0x30
VERSION, EXTENSIONS, SAN_URI = 0xA0, 0xA3, 0x86
_TAG_NAMES = {BOOLEAN: "BOOLEAN", INTEGER: "INTEGER", OCTET_STRING: "OCTET STRING", OID: "OBJECT IDENTIFIER",
              UTC_TIME: "UTCTime", GENERALIZED_TIME: "GeneralizedTime", SEQUENCE: "SEQUENCE",
              VERSION: "[0] version", EXTENSIONS: "[3] extensions"}
# 2.5.29.17 subjectAltName, as its DER content octets
OID_SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])


class DerError(ValueError):
    """The bytes are not the DER certificate (or PEM) they were taken for."""


def _tag_name(tag: int) -> str:
    return _TAG_NAMES.get(tag, f"tag 0x{tag:02x}")


class _Reader:
    """TLVs one after another inside data[pos:end]; offsets in messages are into the whole input."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek_tag(self) -> int | None:
        return None if self.at_end() else self.data[self.pos]

    def read(self, what: str) -> tuple[int, int, int]:
        """The next TLV: (tag, start of its value, end of its value)."""
        at, data = self.pos, self.data
        if at >= self.end:
            raise DerError(f"truncated DER: {what} expected at offset {at}, but its enclosing value ends there")
        tag = data[at]
        if tag & 0x1F == 0x1F:
            raise DerError(f"unsupported DER: high-tag-number form at offset {at} ({what})")
        if at + 1 >= self.end:
            raise DerError(f"truncated DER: {what} at offset {at} has a tag but no length")
        first = data[at + 1]
        start = at + 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0:
                raise DerError(f"not DER: indefinite length at offset {at} ({what})")
            if n > 4:
                raise DerError(f"not DER: {n}-byte length at offset {at} ({what}) is more than any certificate needs")
            if start + n > self.end:
                raise DerError(f"truncated DER: the length of {what} at offset {at} is cut off")
            length = int.from_bytes(data[start:start + n], "big")
            if length < 0x80 or data[start] == 0:
                raise DerError(f"not DER: length of {what} at offset {at} is not in its shortest form")
            start += n
        end = start + length
        if end > self.end:
            raise DerError(f"truncated DER: {what} at offset {at} claims {length} bytes but only "
                           f"{self.end - start} remain")
        self.pos = end
        return tag, start, end

    def expect(self, tag: int, what: str) -> tuple[int, int]:
        at = self.pos
        got, start, end = self.read(what)
        if got != tag:
            raise DerError(f"wrong tag where {what} ({_tag_name(tag)}) was expected at offset {at}: "
                           f"got {_tag_name(got)}")
        return start, end

    def enter(self, tag: int, what: str) -> "_Reader":
        start, end = self.expect(tag, what)
        return _Reader(self.data, start, end)


# ---- PEM ------------------------------------------------------------------------------
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


def pem_blocks(pem: bytes | str, label: str = "CERTIFICATE") -> list[bytes]:
    """The DER payloads of every `label` block, in order (text between blocks is ignored,
    as OpenSSL does). No such block at all is an error."""
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    out = []
    for m in _PEM_RE.finditer(data):
        if m[1].decode() != label:
            continue
        body = re.sub(rb"\s+", b"", m[2])
        try:
            out.append(base64.b64decode(body, validate=True))
        except binascii.Error as exc:
            raise DerError(f"PEM {label} block {len(out) + 1} is not valid base64: {exc}") from None
    if not out:
        raise DerError(f"no PEM {label} block found (expected -----BEGIN {label}-----)")
    return out


def to_pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    """One PEM block, 64 columns, the way OpenSSL and `cryptography` write it."""
    b64 = base64.b64encode(der)
    lines = b"".join(b64[i:i + 64] + b"\n" for i in range(0, len(b64), 64))
    return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (label.encode(), lines, label.encode())


# ---- certificates -----------------------------------------------------------------------
@dataclass(frozen=True)
class CertInfo:
    serial: int
    not_before: dt.datetime   # aware, UTC
    not_after: dt.datetime
    uri_sans: tuple[str, ...]


def _time(r: _Reader, what: str) -> dt.datetime:
    at = r.pos
    tag, start, end = r.read(what)
    raw = r.data[start:end]
    if tag == UTC_TIME:
        form, digits = "UTCTime YYMMDDHHMMSSZ", 12
    elif tag == GENERALIZED_TIME:
        form, digits = "GeneralizedTime YYYYMMDDHHMMSSZ", 14
    else:
        raise DerError(f"wrong tag where {what} (UTCTime or GeneralizedTime) was expected at offset {at}: "
                       f"got {_tag_name(tag)}")
    if len(raw) != digits + 1 or not raw[:digits].isdigit() or raw[digits:] != b"Z":
        raise DerError(f"{what} {raw!r} is not a DER {form}")
    s = raw.decode()
    if tag == UTC_TIME:   # RFC 5280 4.1.2.5.1: YY >= 50 is 19YY
        yy = int(s[:2])
        s = f"{1900 + yy if yy >= 50 else 2000 + yy}{s[2:]}"
    try:
        return dt.datetime(int(s[0:4]), int(s[4:6]), int(s[6:8]), int(s[8:10]), int(s[10:12]), int(s[12:14]),
                           tzinfo=dt.timezone.utc)
    except ValueError as exc:
        raise DerError(f"{what} {raw.decode()!r} is not a real date: {exc}") from None


def _san_uris(data: bytes, start: int, end: int) -> list[str]:
    names = _Reader(data, start, end).enter(SEQUENCE, "subjectAltName GeneralNames")
    if names.at_end():
        raise DerError("subjectAltName is empty (RFC 5280 wants at least one name)")
    uris = []
    while not names.at_end():
        tag, s, e = names.read("GeneralName")
        if tag == SAN_URI:
            try:
                uris.append(data[s:e].decode("ascii"))
            except UnicodeDecodeError:
                raise DerError(f"URI SAN at offset {s} is not an IA5String (non-ASCII bytes)") from None
    return uris


def parse_certificate(der: bytes) -> CertInfo:
    """Serial, validity and URI SANs of one DER X.509 certificate."""
    data = bytes(der)
    outer = _Reader(data)
    cert = outer.enter(SEQUENCE, "Certificate")
    if not outer.at_end():
        raise DerError(f"{len(data) - outer.pos} bytes of trailing data after the certificate")
    tbs = cert.enter(SEQUENCE, "tbsCertificate")
    if tbs.peek_tag() == VERSION:
        tbs.read("version")
    s, e = tbs.expect(INTEGER, "serialNumber")
    if s == e:
        raise DerError("serialNumber is an empty INTEGER")
    serial = int.from_bytes(data[s:e], "big", signed=True)
    tbs.expect(SEQUENCE, "signature AlgorithmIdentifier")
    tbs.expect(SEQUENCE, "issuer Name")
    validity = tbs.enter(SEQUENCE, "validity")
    not_before, not_after = _time(validity, "notBefore"), _time(validity, "notAfter")
    if not validity.at_end():
        raise DerError("validity has more than notBefore and notAfter")
    tbs.expect(SEQUENCE, "subject Name")
    tbs.expect(SEQUENCE, "subjectPublicKeyInfo")
    uris: list[str] | None = None
    while not tbs.at_end():   # issuerUniqueID [1], subjectUniqueID [2], extensions [3]
        tag, s, e = tbs.read("optional tbsCertificate field")
        if tag != EXTENSIONS:
            continue
        exts = _Reader(data, s, e).enter(SEQUENCE, "Extensions")
        while not exts.at_end():
            ext = exts.enter(SEQUENCE, "Extension")
            os_, oe = ext.expect(OID, "extnID")
            if ext.peek_tag() == BOOLEAN:
                ext.read("critical")
            vs, ve = ext.expect(OCTET_STRING, "extnValue")
            if data[os_:oe] == OID_SUBJECT_ALT_NAME:
                if uris is not None:
                    raise DerError("the certificate has two subjectAltName extensions")
                uris = _san_uris(data, vs, ve)
    return CertInfo(serial, not_before, not_after, tuple(uris or ()))
