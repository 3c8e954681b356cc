"""HBONE: HTTP/2 CONNECT tunnels over mutual TLS 1.3 (ALPN h2, port `meshcore.ports.HBONE`), as Istio's ztunnel speaks it.

- `codec`: sans-IO ClientConnection / ServerConnection and their events
- `stream`: HboneStream (trio HalfCloseableStream) over a multiplexed connection
- `client`: HboneClientPool (pooled per source identity, destination identity, address)
- `server`: serve_hbone accept loop, InboundTunnel, ServerStats
"""
from .client import HboneClientPool, HboneConnection
from .errors import (HboneConnectionLost, HboneConnectRefused, HboneConnectTimeout, HboneError,
                     HboneIdentityMismatch, HboneTlsError, HboneTunnelRefused, LocalProtocolError,
                     RemoteProtocolError)
from .server import InboundTunnel, ServerStats, serve_hbone
from .stream import HboneStream
from ..ports import HBONE as HBONE_PORT

__all__ = [
    "HBONE_PORT", "HboneClientPool", "HboneConnection", "HboneStream", "InboundTunnel", "ServerStats",
    "serve_hbone", "HboneError", "HboneConnectTimeout", "HboneConnectRefused", "HboneTlsError",
    "HboneIdentityMismatch", "HboneTunnelRefused", "HboneConnectionLost", "LocalProtocolError",
    "RemoteProtocolError",
]
