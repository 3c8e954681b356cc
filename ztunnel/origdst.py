"""Original destinations recorded by the eBPF connect hook, read with raw bpf(2).

The node agent creates the map and hands ztunnel its fd; the kernel program fills it on
connect() and ztunnel consumes each entry exactly once (lookup, then delete) when the
redirected connection arrives at the pod's outbound listener. Creating and filling the map
here too lets tests exercise the exact byte layout the C side writes; the layout itself
lives in meshcore.wire.origdst (docs/internals.md).
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

from meshcore.wire.origdst import KEY, MAP_SIZE, VALUE, decode_value, encode_key, encode_value

_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
ENOTSUPP = 524   # the kernel's internal "not supported", which bpf(2) can return
BPF_MAP_TYPE_LRU_HASH = 9
BPF_ANY = 0

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


def create_origdst_map(max_entries: int = MAP_SIZE) -> int:
    """A fresh LRU hash with the origdst layout; returns its fd (the caller closes it)."""
    attr = _attr("=IIIII", BPF_MAP_TYPE_LRU_HASH, KEY.size, VALUE.size, max_entries, 0)
    try:
        return _bpf(BPF_MAP_CREATE, attr)
    except OrigDstError as exc:
        raise OrigDstError(exc.errno, f"cannot create the origdst BPF map: {exc.strerror} "
                                      f"(needs CAP_BPF or root)") from None


def put(fd: int, netns_cookie: int, sport: int, ip: str, port: int) -> None:
    """Record an original destination, as the connect4/connect6 program does."""
    key = ctypes.create_string_buffer(encode_key(netns_cookie, sport), KEY.size)
    value = ctypes.create_string_buffer(encode_value(ip, port), VALUE.size)
    _bpf(BPF_MAP_UPDATE_ELEM, _attr("=IIQQQ", fd, 0, _addr(key), _addr(value), BPF_ANY))


class _Take:
    """Buffers for take(), made once: ztunnel's event loop is one thread, and a new
    connection then costs one bpf(2) call (lookup-and-delete, Linux 5.14+) with no
    allocation, instead of two calls and five ctypes buffers."""
    key = ctypes.create_string_buffer(KEY.size)
    value = ctypes.create_string_buffer(VALUE.size)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    atomic = True   # False once the kernel refused BPF_MAP_LOOKUP_AND_DELETE_ELEM for this map type


def take(fd: int, netns_cookie: int, sport: int) -> tuple[str, int] | None:
    """Look up and delete the entry for (netns, client port); None when none was recorded."""
    t = _Take
    KEY.pack_into(t.key, 0, netns_cookie, sport)
    struct.pack_into("=IIQQQ", t.attr, 0, fd, 0, _addr(t.key), _addr(t.value), 0)
    if t.atomic:
        rc = _libc.syscall(_SYS_BPF, BPF_MAP_LOOKUP_AND_DELETE_ELEM, t.attr, _ATTR_SIZE)
        if rc == 0:
            return decode_value(t.value.raw)
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return None
        if err not in (errno.EINVAL, errno.ENOTSUP, ENOTSUPP):
            raise OrigDstError(err, os.strerror(err))
        t.atomic = False   # an older kernel: lookup, then delete
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, t.attr)
    except OrigDstError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    value = t.value.raw
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _attr("=IIQ", fd, 0, _addr(t.key)))
    except OrigDstError as exc:
        if exc.errno != errno.ENOENT:  # a racing delete is harmless: the entry is ours to consume once
            raise
    return decode_value(value)
