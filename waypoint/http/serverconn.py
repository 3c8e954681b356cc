"""One client connection into the waypoint, whatever it speaks (sans-IO): sniff the first
bytes, then drive the HTTP/1.1 or HTTP/2 adapter, or hand everything over as plain L4.
The I/O loop above only moves bytes: `receive_data`, `events()`, `send(event)`,
`data_to_send()`, and `sniff_timeout()` when the client has been silent for too long.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .detect import HTTP1, HTTP2, L4, detect
from .events import ProtocolError
from .h1 import HTTP1Server
from .h2 import HTTP2Server

SNIFF_TIMEOUT = 0.1   # seconds without a decision before forwarding as L4 (server-first protocols)


@dataclass(frozen=True)
class Detected:
    """The protocol is known. For L4, `initial` is what was read so far, to forward first."""
    protocol: str
    initial: bytes = b""


class ServerConnection:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.protocol: str | None = None
        self.http: HTTP1Server | HTTP2Server | None = None
        self._sniffed = b""
        self._pending: list = []

    def receive_data(self, data: bytes) -> None:
        if self.protocol is None:
            self._sniffed += data
            self._decide(detect(self._sniffed, final=not data))
        elif self.http is not None:
            self.http.receive_data(data)

    def sniff_timeout(self) -> None:
        if self.protocol is None:
            self._decide(L4)

    def _decide(self, protocol: str | None) -> None:
        if protocol is None:
            return
        self.protocol = protocol
        buffered, self._sniffed = self._sniffed, b""
        if protocol == L4:
            self._pending.append(Detected(L4, buffered))
            return
        self.http = HTTP2Server(self.clock) if protocol == HTTP2 else HTTP1Server()
        self._pending.append(Detected(protocol))
        self.http.receive_data(buffered)

    def events(self) -> list:
        out, self._pending = self._pending, []
        return out + (self.http.events() if self.http is not None else [])

    def send(self, ev) -> bytes:
        return self.http.send(ev)

    def data_to_send(self) -> bytes:
        return self.http.data_to_send() if isinstance(self.http, HTTP2Server) else b""

    def refusal(self, err: ProtocolError) -> bytes:
        """What to write before closing after `err`: the HTTP/1 error answer or the HTTP/2 GOAWAY."""
        if isinstance(self.http, HTTP1Server):
            return self.http.error_response(err)
        return self.data_to_send()

    @property
    def keep_alive(self) -> bool:
        return self.http is not None and self.http.keep_alive


__all__ = ["Detected", "HTTP1", "HTTP2", "L4", "SNIFF_TIMEOUT", "ServerConnection"]
