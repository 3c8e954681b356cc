"""The codec's input side: received bytes split at HTTP/2 frame boundaries.

Plain DATA on open streams, the tunnel's own header blocks (a CONNECT, its 200) and its
END_STREAMs are taken by fast paths (`h2private`, `fastheaders`) and become our events
here; every other frame goes to h2, in order, and `codec._Base` translates h2's events.
A mixin of `codec._Base`, which holds the h2 connection, the frame guard and the buffers.
"""
from __future__ import annotations

import h2.exceptions

from . import fastheaders, h2private
from .events import Data

MAX_FRAME_SIZE = 1024 * 1024   # our SETTINGS_MAX_FRAME_SIZE (see codec's window comment)


class FrameSplitter:
    """`_receive` and the frame walk of `codec._Base` (which provides `_h2`, `guard`,
    `_inbuf` and `_preface_left`)."""

    def _receive(self, data: bytes) -> list:
        """Split the input at frame boundaries: plain DATA on open streams is handled here
        (`h2private`), every other frame goes to h2 in order. Only a frame cut by the end of
        a read is buffered (`_inbuf`), completed from the next read with just the bytes it
        lacks; everything else is parsed in place, so each payload byte is copied once."""
        conn = self._h2
        events: list = []
        data = data if type(data) is bytes or type(data) is memoryview else bytes(data)
        off = 0
        if self._preface_left:
            head = bytes(data[:self._preface_left])
            self._preface_left -= len(head)
            off = len(head)
            events.extend(conn.receive_data(head))
        buf = self._inbuf
        if buf:
            if len(buf) < h2private.HEADER_LEN:
                take = min(h2private.HEADER_LEN - len(buf), len(data) - off)
                buf += memoryview(data)[off:off + take]
                off += take
                if len(buf) < h2private.HEADER_LEN:
                    return events
            hi, lo, ftype = h2private.HEADER.unpack_from(buf)[:3]
            self._check_size(hi << 16 | lo, events, b"")
            if ftype != h2private.DATA:
                self.guard.check_length(ftype, hi << 16 | lo)
            whole = h2private.HEADER_LEN + (hi << 16 | lo)
            take = min(whole - len(buf), len(data) - off)
            buf += memoryview(data)[off:off + take]
            off += take
            if len(buf) < whole:
                return events
            self._inbuf = bytearray()
            self._frames(memoryview(buf), 0, events)   # exactly one whole frame (buf is not reused)
        rest = self._frames(data, off, events)
        if rest < len(data):
            self._inbuf = bytearray(memoryview(data)[rest:])
        return events

    def _check_size(self, length: int, events: list, pending: bytes) -> None:
        if length > MAX_FRAME_SIZE:
            # Refused on its header, before buffering up to 16 MiB of it (h2 would wait).
            if pending:
                events.extend(self._h2.receive_data(bytes(pending)))
            raise h2.exceptions.FrameTooLargeError(
                f"frame of {length} bytes exceeds our SETTINGS_MAX_FRAME_SIZE {MAX_FRAME_SIZE}")

    def _frames(self, buf: bytes, pos: int, events: list) -> int:
        """Handle every whole frame in buf[pos:]; return where the first partial one starts.
        Fast-path frames (`h2private`) become our events here; h2's are translated later."""
        conn, guard = self._h2, self.guard
        size, slow_from = len(buf), -1
        unpack, take, data_event = h2private.HEADER.unpack_from, h2private.take, Data.parsed
        header_len, data_type, ends = h2private.HEADER_LEN, h2private.DATA, h2private.END_STREAM
        while size - pos >= header_len:
            hi, lo, ftype, flags, sid = unpack(buf, pos)
            length = hi << 16 | lo
            if length > MAX_FRAME_SIZE:
                self._check_size(length, events, buf[slow_from:pos] if slow_from >= 0 else b"")
            end = pos + header_len + length
            if ftype != data_type:
                # Checked on the header, before a fragment is buffered; counted once whole.
                guard.check_length(ftype, length)
                if end <= size:
                    guard.frame(ftype, flags, length)
            if end > size:
                break
            # The tunnel's own header blocks (a CONNECT, its 200) and its END_STREAMs have a fast path too.
            heads = (ftype == h2private.HEADERS and flags == h2private.END_HEADERS) or (ftype == data_type and flags == ends and not length)
            if (ftype == data_type and flags == 0 and length) or heads:
                if slow_from >= 0:   # earlier frames may change this stream's state: h2 first
                    events.extend(conn.receive_data(bytes(buf[slow_from:pos])))
                    slow_from = -1
                sid &= 0x7FFFFFFF
                ev = fastheaders.take(self, sid, bytes(buf[pos + header_len:end]), ftype) if heads else (
                    data_event(sid, buf[pos + header_len:end]) if take(conn, sid, length) else None)
                if ev is not None:
                    events.append(ev)
                    pos = end
                    continue
            if slow_from < 0:
                slow_from = pos
            pos = end
        if slow_from >= 0:
            events.extend(conn.receive_data(bytes(buf[slow_from:pos])))
        return pos
