"""The waypoint's access log (logger `trellis.access`, one JSON line per request), written the
way Envoy writes its access-log file: lines are buffered and leave together, at most
FLUSH_INTERVAL after the first of them (Envoy's `file_flush_interval`, 1 s), when the
buffer passes FLUSH_BYTES, and when the trio run ends.

Through `logging` each line cost a LogRecord, a formatted timestamp and a write() with a
flush: about a fifth of the in-mesh waypoint's CPU per request. Here, when the logger's
output is the plain stream handler `waypoint.__main__` sets up (`FORMAT`), the line is
formatted here (the timestamp's seconds part once a second) into the buffer; any other
setup (a test's capture handler, a filter, another format) gets each line through
`logging`, unbuffered, as before.
"""
from __future__ import annotations

import json
import logging
import time

import trio

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"   # waypoint.__main__'s basicConfig
FLUSH_INTERVAL = 1.0
FLUSH_BYTES = 64 * 1024
access_log = logging.getLogger("trellis.access")
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode   # json.dumps builds one per call


class AccessLog:
    def __init__(self, logger: logging.Logger = access_log):
        self.logger = logger
        self.buf: list[str] = []
        self.size = 0
        self._handler: logging.StreamHandler | None = None   # the plain handler, when the fast path applies
        self._checked = -1.0         # when the handlers were last looked at
        self._second = -1
        self._prefix = ""
        self._run = None             # the trio run whose flusher task is running

    def write(self, fields: dict) -> None:
        now = time.time()
        if now - self._checked >= FLUSH_INTERVAL:
            self._checked = now
            self._handler = _plain_handler(self.logger)
            if self._handler is None:
                self.flush()
        message = _encode(fields)
        if self._handler is None:
            self.logger.handle(self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, message, None,
                                                      None))
            return
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = f"{self._prefix},{int((now - second) * 1000):03d} {self.logger.name} INFO {message}\n"
        self.buf.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif len(self.buf) == 1:
            self._ensure_flusher()

    def flush(self) -> None:
        if not self.buf:
            return
        text, self.buf, self.size = "".join(self.buf), [], 0
        handler = self._handler or _plain_handler(self.logger)
        if handler is None:   # the setup changed meanwhile: through logging after all
            for line in text.splitlines():
                self.logger.handle(self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0,
                                                          line.split(" INFO ", 1)[1], None, None))
            return
        handler.acquire()
        try:
            handler.stream.write(text)
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


def _plain_handler(logger: logging.Logger) -> logging.StreamHandler | None:
    """The handler the logger's lines go to, if that is one plain StreamHandler with FORMAT
    and nothing else (no filter, no other handler) would see them; else None."""
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for h in current.handlers:
            if h.level > logging.INFO:
                continue
            if found is not None or type(h) is not logging.StreamHandler or h.filters:
                return None
            fmt = h.formatter
            if fmt is None or fmt._fmt != FORMAT or fmt.datefmt is not None or fmt.default_msec_format != "%s,%03d":
                return None
            found = h
        if not current.propagate:
            break
        current = current.parent
    return found


LOG = AccessLog()
