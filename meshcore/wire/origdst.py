"""The original-destination BPF map's layout (bpf/include/maps.h), sans-IO.

The connect4/connect6 + sockops programs write it; ztunnel reads (and deletes) one entry
per redirected connection; the node agent creates it. Key: the accepted socket's pod
netns cookie and the client's port (host order). Value: addresses in network order, port
in host order, a v4-mapped IPv6 destination stored as AF_INET.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

from . import WireError

# struct origdst_key { __u64 netns_cookie; __u16 sport; __u16 pad[3]; }
KEY = struct.Struct("=QH6x")
# struct origdst_val { __u32 ip4; __u32 ip6[4]; __u16 port; __u16 family; }
VALUE = struct.Struct("=4s16sHH")
MAP_NAME = b"origdst"
MAP_SIZE = 65536  # ORIGDST_MAP_SIZE: entries live from connect() until ztunnel accepts


def encode_key(netns_cookie: int, sport: int) -> bytes:
    return KEY.pack(netns_cookie, sport)


def encode_value(ip: str, port: int) -> bytes:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return VALUE.pack(addr.packed, b"\0" * 16, port, socket.AF_INET)
    return VALUE.pack(b"\0" * 4, addr.packed, port, socket.AF_INET6)


def decode_value(raw: bytes) -> tuple[str, int]:
    if len(raw) != VALUE.size:
        raise WireError(f"origdst value is {len(raw)} bytes, expected {VALUE.size}: "
                        f"is the BPF program built against the same maps.h?")
    ip4, ip6, port, family = VALUE.unpack(raw)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(ip4)), port
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(ip6)), port
    raise WireError(f"origdst value field 'family' is {family}, neither AF_INET nor AF_INET6: "
                    f"is the BPF program built against the same maps.h?")


def bpf_defines() -> list[str]:
    """The `-D` cflags that size the map on the C side from this module."""
    return [f"-DORIGDST_MAP_SIZE={MAP_SIZE}"]
