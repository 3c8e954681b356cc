"""The waypoint's access log (logger `trellis.access`, one compact JSON line per request),
buffered as Envoy's access-log file is (`meshcore.accesslog`: lines leave together, at most
FLUSH_INTERVAL after the first of them, when the buffer passes FLUSH_BYTES, and when the
trio run ends; any logging setup but the plain handler `waypoint.__main__` makes with
FORMAT gets each line through `logging`, unbuffered)."""
from __future__ import annotations

import json
import logging

from meshcore import accesslog
from meshcore.accesslog import FLUSH_BYTES, FLUSH_INTERVAL  # noqa: F401 (the waypoint's figures too)

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"   # waypoint.__main__'s basicConfig
access_log = logging.getLogger("trellis.access")
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode   # json.dumps builds one per call


class AccessLog(accesslog.AccessLog):
    def __init__(self, logger: logging.Logger = access_log):
        super().__init__(logger, _encode)


LOG = AccessLog()
