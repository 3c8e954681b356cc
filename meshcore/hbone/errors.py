"""HBONE error types.

Protocol errors split like h11's: `LocalProtocolError` means our own code misused the
codec; `RemoteProtocolError` means the peer sent something we cannot accept, and carries
the HTTP status we would answer with. `HboneError` and its subclasses are what callers of
the client pool see, worded as advice for whoever reads the log.
"""
from __future__ import annotations

from .. import ports


class LocalProtocolError(Exception):
    """The caller misused the codec (wrong stream, wrong state, bad argument)."""


class RemoteProtocolError(Exception):
    """The peer violated HTTP/2 or HBONE; `status_hint` is the answer we would give."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class HboneError(Exception):
    """Base of every error the HBONE client raises to its caller."""


class HboneConnectTimeout(HboneError):
    pass


class HboneConnectRefused(HboneError):
    pass


class HboneTlsError(HboneError):
    """TLS handshake failed: usually a certificate from another CA, or an expired one."""


class HboneIdentityMismatch(HboneError):
    pass


class HboneTunnelRefused(HboneError):
    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class HboneConnectionLost(HboneError):
    """The HBONE connection broke (GOAWAY, TCP reset, protocol error) before the tunnel opened."""


# Why a peer refused a tunnel, as advice; ztunnel uses the same codes.
STATUS_ADVICE = {
    400: "the destination rejected the tunnel request as malformed (bad :authority?)",
    401: "the destination's authorization policy denied this identity",
    403: "the destination's authorization policy denied this identity",
    503: "the destination could not reach the application port, is the app listening?",
    504: "the destination timed out connecting to the application port",
}


def describe_tls_failure(exc: BaseException, peer: str, *, we_are_server: bool) -> str:
    """Turn an OpenSSL failure into advice naming the peer (pure; table-tested)."""
    cause: BaseException | None = exc
    while cause is not None and not _is_ssl_error(cause):
        cause = cause.__cause__ or cause.__context__
    text = str(cause if cause is not None else exc) or type(exc).__name__
    upper = text.upper()
    who = "client" if we_are_server else "peer"
    if "CERTIFICATE_VERIFY_FAILED" in upper or "UNKNOWN_CA" in upper:
        if we_are_server:
            return f"{who} {peer} presented a certificate not signed by the mesh CA ({text})"
        if "UNKNOWN_CA" in upper:
            return f"{peer} does not trust our certificate: it is not signed by the mesh CA it knows ({text})"
        return f"peer {peer} presented a certificate not signed by the mesh CA ({text})"
    if "CERTIFICATE_REQUIRED" in upper or "PEER_DID_NOT_RETURN_A_CERTIFICATE" in upper:
        return (f"{who} {peer} sent no client certificate; HBONE needs mutual TLS "
                f"(is it a mesh workload's ztunnel?) ({text})")
    if any(s in upper for s in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_MESSAGE",
                                "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNSUPPORTED_PROTOCOL")):
        return f"{who} {peer} did not speak TLS 1.3 (plaintext or garbage on HBONE port {ports.HBONE}?) ({text})"
    if "EXPIRED" in upper:
        return f"{who} {peer} presented an expired certificate; is its certificate renewal working? ({text})"
    return f"TLS handshake with {who} {peer} failed: {text}"


def _is_ssl_error(e: BaseException) -> bool:
    import ssl
    return isinstance(e, ssl.SSLError)
