"""JSON-lines framing for the control-plane API: one JSON object per line, bounded."""
from __future__ import annotations

import json
from typing import Any

import trio

MAX_LINE = 16 * 1024 * 1024


class FramingError(ValueError):
    pass


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream, max_line: int = MAX_LINE):
        self.stream, self.max_line, self.buf = stream, max_line, bytearray()

    async def read(self) -> Any | None:
        """The next object, or None at a clean end of stream."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise FramingError(f"not JSON: {exc}") from None
                if not isinstance(obj, dict):
                    raise FramingError("each line must be a JSON object")
                return obj
            if len(self.buf) > self.max_line:
                raise FramingError(f"line longer than {self.max_line} bytes")
            data = await self.stream.receive_some(65536)
            if not data:
                if self.buf:
                    raise FramingError("stream ended in the middle of a line")
                return None
            self.buf += data


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"
