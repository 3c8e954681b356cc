"""Original destinations recorded by the eBPF connect hook, read with raw bpf(2).

The node agent creates the map and hands ztunnel its fd; the kernel program fills it on
connect() and ztunnel consumes each entry exactly once (lookup, then delete) when the
redirected connection arrives at the pod's 15001 listener. Creating and filling the map
here too lets tests exercise the exact byte layout the C side writes (docs/internals.md).
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct

_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
BPF_MAP_TYPE_LRU_HASH = 9
BPF_ANY = 0

# struct { __u64 netns_cookie; __u16 sport; __u16 pad[3]; }
KEY = struct.Struct("=QH6x")
# struct { __u32 ip4; __u32 ip6[4]; __u16 port; __u16 family; } (addresses network order)
VALUE = struct.Struct("=4s16sHH")
_ATTR_SIZE = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class OrigDstError(OSError):
    pass


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    rc = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise OrigDstError(err, os.strerror(err))
    return rc


def _attr(fmt: str, *values) -> ctypes.Array:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr(buf: ctypes.Array) -> int:
    return ctypes.addressof(buf)


def create_origdst_map(max_entries: int = 65536) -> int:
    """A fresh LRU hash with the origdst layout; returns its fd (the caller closes it)."""
    attr = _attr("=IIIII", BPF_MAP_TYPE_LRU_HASH, KEY.size, VALUE.size, max_entries, 0)
    try:
        return _bpf(BPF_MAP_CREATE, attr)
    except OrigDstError as exc:
        raise OrigDstError(exc.errno, f"cannot create the origdst BPF map: {exc.strerror} "
                                      f"(needs CAP_BPF or root)") from None


def encode_value(ip: str, port: int) -> bytes:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return VALUE.pack(addr.packed, b"\0" * 16, port, socket.AF_INET)
    return VALUE.pack(b"\0" * 4, addr.packed, port, socket.AF_INET6)


def decode_value(raw: bytes) -> tuple[str, int]:
    ip4, ip6, port, family = VALUE.unpack(raw)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(ip4)), port
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(ip6)), port
    raise ValueError(f"origdst entry has unknown address family {family}: "
                     f"is the BPF program built against the same maps.h?")


def put(fd: int, netns_cookie: int, sport: int, ip: str, port: int) -> None:
    """Record an original destination, as the connect4/connect6 program does."""
    key = ctypes.create_string_buffer(KEY.pack(netns_cookie, sport), KEY.size)
    value = ctypes.create_string_buffer(encode_value(ip, port), VALUE.size)
    _bpf(BPF_MAP_UPDATE_ELEM, _attr("=IIQQQ", fd, 0, _addr(key), _addr(value), BPF_ANY))


def take(fd: int, netns_cookie: int, sport: int) -> tuple[str, int] | None:
    """Look up and delete the entry for (netns, client port); None when none was recorded."""
    key = ctypes.create_string_buffer(KEY.pack(netns_cookie, sport), KEY.size)
    value = ctypes.create_string_buffer(VALUE.size)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _attr("=IIQQQ", fd, 0, _addr(key), _addr(value), 0))
    except OrigDstError as exc:
        if exc.errno == 2:  # ENOENT
            return None
        raise
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _attr("=IIQ", fd, 0, _addr(key)))
    except OrigDstError as exc:
        if exc.errno != 2:  # a racing delete is harmless: the entry is ours to consume once
            raise
    return decode_value(value.raw)
