"""The shared access log writes, for ztunnel's formats (owner and workers), the line logging
would have written, and leaves formats it cannot write to logging."""
from __future__ import annotations

import io
import json
import logging

import pytest

from meshcore import accesslog
from meshcore.telemetry import ConnLabels, log_connection

LOGGER = logging.Logger("test.access", logging.INFO)   # outside logging's tree (pytest's capture handlers)


def _setup(fmt: str) -> io.StringIO:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter(fmt))
    LOGGER.handlers[:] = [handler]
    return handler.stream


@pytest.mark.parametrize("fmt", ["%(asctime)s %(levelname)s %(name)s %(message)s",              # ztunnel
                                 "%(asctime)s %(levelname)s worker-3 %(name)s %(message)s",     # its workers
                                 "[%(levelname)s] %(asctime)s %(name)s: %(message)s <end>"])
def test_a_buffered_line_is_the_line_logging_writes(fmt):
    stream = _setup(fmt)
    log = accesslog.AccessLog(LOGGER, json.JSONEncoder(sort_keys=True).encode)
    log.write({"b": 2, "a": "x y"})   # outside trio: written at once
    ours = stream.getvalue()
    stream.seek(0), stream.truncate()
    LOGGER.info(json.dumps({"b": 2, "a": "x y"}, sort_keys=True))
    theirs = stream.getvalue()
    at = len(fmt[:fmt.index("%(asctime)s")].replace("%(levelname)s", "INFO"))   # the same line but for the clock
    assert ours.count("\n") == 1 and len(ours) == len(theirs)
    assert ours[:at] == theirs[:at] and ours[at + 23:] == theirs[at + 23:] and ours[at + 19] == ","


@pytest.mark.parametrize("fmt", ["%(asctime)s %(process)d %(message)s", "%(message)s", "%(asctime)s 100%% %(message)s",
                                 "%(asctime)-30s %(message)s"])
def test_formats_it_cannot_write_go_through_logging(fmt):
    stream = _setup(fmt)
    log = accesslog.AccessLog(LOGGER, json.JSONEncoder(sort_keys=True).encode)
    log.write({"a": 1})
    expected = logging.Formatter(fmt).format(logging.LogRecord("test.access", logging.INFO, "", 0, '{"a": 1}', None, None))
    line = stream.getvalue()
    assert log.buf == [] and line.count("\n") == 1 and '{"a": 1}' in line
    if "asctime" not in fmt:
        assert line == expected + "\n"


def test_ztunnel_connection_lines_keep_their_json(caplog):
    with caplog.at_level(logging.INFO, "trellis.access"):
        entry = log_connection(direction="inbound", src="1.1.1.1:5", dst="2.2.2.2:80", labels=ConnLabels("destination"),
                               sent=3, received=4, started=0.0, outcome="ok", pod="ns/p")
    [record] = [r for r in caplog.records if r.name == "trellis.access"]
    assert record.getMessage() == json.dumps(entry, sort_keys=True)
