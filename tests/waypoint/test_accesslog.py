"""The access log's buffered fast path writes what logging would have written, leaves within
the flush interval (and at the end of the run), and steps aside for any other logging setup."""
from __future__ import annotations

import io
import json
import logging

import pytest
import trio

from waypoint import accesslog

FIELDS = {"reporter": "waypoint", "method": "GET", "path": "/a?b=1", "status": 200, "duration_ms": 1.5,
          "src.identity": None, "error": ValueError("x")}


LOGGER = logging.Logger("test.access", logging.INFO)   # outside logging's tree: pytest's capture handlers
                                                       # would make it another setup


@pytest.fixture
def plain():
    """The setup waypoint.__main__ makes: one StreamHandler with FORMAT."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter(accesslog.FORMAT))
    LOGGER.handlers[:] = [handler]
    yield handler.stream
    LOGGER.handlers[:] = []


def test_a_buffered_line_is_the_line_logging_writes(plain):
    log = accesslog.AccessLog(LOGGER)
    log.write(FIELDS)   # outside trio: written at once
    ours = plain.getvalue()
    plain.seek(0), plain.truncate()
    LOGGER.info(json.dumps(FIELDS, separators=(",", ":"), default=str))
    theirs = plain.getvalue()
    assert ours.endswith("\n") and ours.count("\n") == 1
    # the same line but for the clock: "YYYY-mm-dd HH:MM:SS,mmm test.access INFO {json}"
    assert ours[23:] == theirs[23:] and ours[:4] == theirs[:4] and ours[19] == theirs[19] == ","
    assert json.loads(ours.split(" INFO ", 1)[1]) == dict(FIELDS, error="x")


async def test_lines_leave_together_within_the_interval_and_at_the_end(plain, autojump_clock):
    log = accesslog.AccessLog(LOGGER)
    log.write(FIELDS)
    log.write(FIELDS)
    assert plain.getvalue() == ""   # buffered
    await trio.sleep(accesslog.FLUSH_INTERVAL + 0.01)
    assert plain.getvalue().count("\n") == 2
    log.write(FIELDS)
    assert plain.getvalue().count("\n") == 2


def test_the_last_lines_are_written_when_the_run_ends(plain):
    log = accesslog.AccessLog(LOGGER)

    async def main():
        log.write(FIELDS)
        assert plain.getvalue() == ""
    trio.run(main)
    assert plain.getvalue().count("\n") == 1


async def test_a_full_buffer_is_written_at_once(plain):
    log = accesslog.AccessLog(LOGGER)
    big = dict(FIELDS, path="/" + "x" * 1000)
    while not plain.getvalue():
        log.write(big)
        assert log.size < accesslog.FLUSH_BYTES
    assert len(plain.getvalue()) >= accesslog.FLUSH_BYTES and log.buf == []


def test_any_other_setup_gets_each_line_through_logging(caplog):
    # pytest's capture handler on the root: not the plain setup, so each line goes through logging
    with caplog.at_level(logging.INFO, "trellis.access"):
        accesslog.AccessLog().write(FIELDS)
    assert [json.loads(r.getMessage())["path"] for r in caplog.records if r.name == "trellis.access"] == ["/a?b=1"]
