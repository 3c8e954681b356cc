"""HTTP/2 limits of an HBONE connection, checked per frame before h2 sees it (sans-IO).

h2 enforces the protocol but not abuse of it. A peer with a valid mesh certificate could:
- open and reset streams as fast as it can write (rapid reset, CVE-2023-44487): every
  stream costs a handler, an authorization and a dial of the app before the reset lands;
- send a header block that never ends (CONTINUATION flood, CVE-2024-27316): h2 buffers
  the fragments until END_HEADERS and checks the header list size only then, and our
  1 MiB SETTINGS_MAX_FRAME_SIZE (for DATA) lets each fragment be 1 MiB;
- flood SETTINGS or PING frames, each of which h2 answers with an ACK.

`FrameGuard` sees every frame header (length, type, flags) as the codec splits the input,
before the frame is buffered or parsed, and raises `LimitExceeded` naming the limit; the
codec answers with GOAWAY(ENHANCE_YOUR_CALM) and the connection closes. Rates are counted
in fixed windows of `Limits.window` seconds, so the state is a few integers whatever the
peer sends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .errors import RemoteProtocolError

ENHANCE_YOUR_CALM = 0xB   # RFC 9113 error code: the peer is generating excessive load
HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, CONTINUATION = 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x9
ACK, END_HEADERS = 0x1, 0x4
FRAME_HEADER = 9


@dataclass(frozen=True)
class Limits:
    """Per-connection HTTP/2 limits (README: operating notes). Defaults leave a busy
    ztunnel-to-ztunnel connection far below each one."""
    max_concurrent_streams: int = 100        # advertised SETTINGS_MAX_CONCURRENT_STREAMS
    max_header_block: int = 16 * 1024        # HEADERS + CONTINUATION bytes (frame headers counted) per block
    header_block_timeout: float = 5.0        # seconds for a started header block to end (END_HEADERS)
    max_resets: int = 1000                   # RST_STREAM frames received per window
    max_premature_resets: int = 100          # streams the peer opened and reset before they were answered, per window
    max_control_frames: int = 200            # SETTINGS and PING frames (not ACKs) received per window
    window: float = 10.0                     # seconds over which the rates above are counted

    def __post_init__(self) -> None:
        for name in ("max_concurrent_streams", "max_header_block", "max_resets", "max_premature_resets",
                     "max_control_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"HBONE limit {name} must be >= 1, got {getattr(self, name)}")
        if self.header_block_timeout <= 0 or self.window <= 0:
            raise ValueError("HBONE limits header_block_timeout and window must be > 0")


DEFAULT_LIMITS = Limits()


class LimitExceeded(RemoteProtocolError):
    """The peer went over one of our limits; `limit` names it (a metric label)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message, status_hint=429)
        self.limit = limit


class _Rate:
    """Events per fixed window: O(1) state."""
    __slots__ = ("budget", "count", "since")

    def __init__(self, budget: int) -> None:
        self.budget, self.count, self.since = budget, 0, 0.0

    def hit(self, now: float, window: float) -> bool:
        """Count one event; True when it is over the budget."""
        if now - self.since >= window:
            self.since, self.count = now, 0
        self.count += 1
        return self.count > self.budget


class FrameGuard:
    """Checks one connection's inbound frames against `Limits`."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._resets = _Rate(limits.max_resets)
        self._premature = _Rate(limits.max_premature_resets)
        self._control = _Rate(limits.max_control_frames)
        self.block_bytes = -1   # bytes of the header block in progress; -1: none

    @property
    def header_block_open(self) -> bool:
        """A HEADERS frame arrived and its END_HEADERS did not yet (the deadline runs)."""
        return self.block_bytes >= 0

    def check_length(self, ftype: int, length: int) -> None:
        """On a frame's header, before its payload is buffered: a header fragment must fit
        what is left of the block's allowance."""
        if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
            used = max(self.block_bytes, 0) + FRAME_HEADER + length
            if used > self.limits.max_header_block:
                raise LimitExceeded("header_block", f"header block of {used}+ bytes (HEADERS and CONTINUATION) "
                                                    f"exceeds the limit of {self.limits.max_header_block}")

    def frame(self, ftype: int, flags: int, length: int) -> None:
        """A whole non-DATA frame, before h2 parses it."""
        if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
            self.check_length(ftype, length)
            if flags & END_HEADERS:
                self.block_bytes = -1
            else:
                self.block_bytes = max(self.block_bytes, 0) + FRAME_HEADER + length
        elif ftype == RST_STREAM:
            if self._resets.hit(self._clock(), self.limits.window):
                raise LimitExceeded("resets", f"more than {self.limits.max_resets} RST_STREAM frames in "
                                              f"{self.limits.window:g}s (rapid reset)")
        elif ftype in (SETTINGS, PING) and not flags & ACK:
            if self._control.hit(self._clock(), self.limits.window):
                raise LimitExceeded("control_frames", f"more than {self.limits.max_control_frames} SETTINGS/PING "
                                                      f"frames in {self.limits.window:g}s (flood)")

    def premature_reset(self) -> None:
        """The peer reset a stream it opened before we answered it."""
        if self._premature.hit(self._clock(), self.limits.window):
            raise LimitExceeded("premature_resets", f"more than {self.limits.max_premature_resets} streams opened "
                                                    f"and reset before being answered in {self.limits.window:g}s "
                                                    f"(rapid reset)")

    def header_block_timed_out(self) -> LimitExceeded:
        return LimitExceeded("header_block_timeout", f"header block not completed within "
                                                     f"{self.limits.header_block_timeout:g}s (CONTINUATION stall)")
