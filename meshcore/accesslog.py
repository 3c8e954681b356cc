"""The data plane's access logs (logger `trellis.access`, one JSON line per connection or
request), written the way Envoy writes its access-log file: lines are buffered and leave
together, at most FLUSH_INTERVAL after the first of them (Envoy's `file_flush_interval`,
1 s), when the buffer passes FLUSH_BYTES, and when the trio run ends.

Through `logging` each line costs a LogRecord, a formatted timestamp and a write() with a
flush. Here, when the logger's output is one plain StreamHandler whose format is made of
`%(asctime)s`, `%(levelname)s`, `%(name)s`, `%(message)s` and literal text (what ztunnel
and the waypoint set up), the line is formatted here (the timestamp's seconds part once a
second) into the buffer; any other setup (a test's capture handler, a filter, another
format) gets each line through `logging`, unbuffered, as before.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Callable

import trio

FLUSH_INTERVAL = 1.0
FLUSH_BYTES = 64 * 1024
_FIELD = re.compile(r"%\((\w+)\)s")


class AccessLog:
    """`write(fields)`: one line, `encode(fields)` as its message."""

    def __init__(self, logger: logging.Logger, encode: Callable[[dict], str]):
        self.logger, self.encode = logger, encode
        self.buf: list[str] = []
        self.size = 0
        self._handler: logging.StreamHandler | None = None   # the plain handler, when the fast path applies
        self._parts: tuple[str, str, str] = ("", "", "")     # the line around the time and the message
        self._checked = -1.0         # when the handlers were last looked at
        self._second = -1
        self._prefix = ""
        self._run = None             # the trio run whose flusher task is running

    def write(self, fields: dict) -> None:
        now = time.time()
        if now - self._checked >= FLUSH_INTERVAL:
            self._checked = now
            self._handler, self._parts = _plain_handler(self.logger)
            if self._handler is None:
                self.flush()
        message = self.encode(fields)
        if self._handler is None:
            self.logger.handle(self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, message, None,
                                                      None))
            return
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        head, mid, tail = self._parts
        line = f"{head}{self._prefix},{int((now - second) * 1000):03d}{mid}{message}{tail}\n"
        self.buf.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif len(self.buf) == 1:
            self._ensure_flusher()

    def flush(self) -> None:
        if not self.buf:
            return
        lines, self.buf, self.size = self.buf, [], 0
        handler = self._handler or _plain_handler(self.logger)[0]
        if handler is None:   # the setup changed meanwhile: through logging after all
            head, mid, tail = self._parts
            start = len(head) + len("YYYY-mm-dd HH:MM:SS,mmm") + len(mid)
            for line in lines:
                message = line[start:len(line) - len(tail) - 1]
                self.logger.handle(self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, message,
                                                          None, None))
            return
        handler.acquire()
        try:
            handler.stream.write("".join(lines))
            handler.stream.flush()
        except (OSError, ValueError):
            pass   # as logging.Handler.handleError would, minus the traceback: the log is gone
        finally:
            handler.release()

    def _ensure_flusher(self) -> None:
        """A system task of the current trio run flushes every FLUSH_INTERVAL (and at its end);
        outside trio (a script, a test) the line is written at once."""
        try:
            run = trio.lowlevel.current_root_task()
        except RuntimeError:
            self.flush()
            return
        if run is not self._run:
            self._run = run
            trio.lowlevel.spawn_system_task(self._flusher, run)

    async def _flusher(self, run) -> None:
        # a system task: what it raises would end the whole run, so a failing write is dropped
        try:
            while self._run is run:
                await trio.sleep(FLUSH_INTERVAL)
                self._flush_quietly()
        finally:
            self._flush_quietly()
            if self._run is run:
                self._run = None

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:   # noqa: BLE001 (logging's own rule: a broken log never stops the proxy)
            self.buf, self.size = [], 0


def _plain_handler(logger: logging.Logger) -> tuple[logging.StreamHandler | None, tuple[str, str, str]]:
    """The handler the logger's lines go to, if that is one plain StreamHandler with a format
    `_parts` can write and nothing else (no filter, no other handler) would see them, and the
    format's parts; else None."""
    found, parts = None, ("", "", "")
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None, parts
        for h in current.handlers:
            if h.level > logging.INFO:
                continue
            if found is not None or type(h) is not logging.StreamHandler or h.filters:
                return None, parts
            fmt = h.formatter
            split = _parts(fmt, logger.name) if fmt is not None else None
            if split is None:
                return None, parts
            found, parts = h, split
        if not current.propagate:
            break
        current = current.parent
    return found, parts


def _parts(fmt: logging.Formatter, name: str) -> tuple[str, str, str] | None:
    """(before the time, between the time and the message, after the message) of an INFO line
    of `name` in `fmt`, when logging's default time format applies and the format names only
    the time (once, before the message), the level, the logger and the message (once)."""
    if (type(fmt) is not logging.Formatter or type(fmt._style) is not logging.PercentStyle or fmt.datefmt is not None
            or fmt.default_time_format != "%Y-%m-%d %H:%M:%S" or fmt.default_msec_format != "%s,%03d"
            or fmt.converter is not time.localtime):
        return None
    text = fmt._fmt or ""
    names = _FIELD.findall(text)
    if names.count("asctime") != 1 or names.count("message") != 1 or set(names) - {"asctime", "message", "levelname",
                                                                                     "name"}:
        return None
    if "%" in _FIELD.sub("", text):
        return None   # a %% or another conversion: logging's to write
    filled = text.replace("%(levelname)s", "INFO").replace("%(name)s", name)
    head, _, rest = filled.partition("%(asctime)s")
    mid, found, tail = rest.partition("%(message)s")
    return (head, mid, tail) if found else None
