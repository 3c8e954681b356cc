"""The bench parsers on recorded tool output, and the report's arithmetic."""
import json
import re
import os

import pytest

from bench import measure, report
from bench.run import Row

WRK = """Running 10s test @ http://10.96.0.10/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.20ms    3.10ms  45.12ms   90.00%
    Req/Sec     2.23k   120.00     2.40k    70.00%
  Latency Distribution
     50%    6.80ms
     75%    8.00ms
     90%   10.00ms
     99%   22.01ms
  22270 requests in 10.00s, 3.40MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2227.00
Transfer/sec:    348.00KB
"""


def test_parse_wrk():
    r = measure.parse_wrk(WRK)
    assert (r.requests, r.rps, r.p50_ms, r.p99_ms, r.max_ms, r.errors) == (22270, 2227.0, 6.8, 22.01, 45.12, 7)


def test_parse_wrk_units_and_missing_figures():
    assert measure.parse_wrk(WRK.replace("6.80ms", "680.00us").replace("45.12ms", "1.20s")).p50_ms == pytest.approx(0.68)
    with pytest.raises(ValueError, match="without the expected figures"):
        measure.parse_wrk("unable to connect to 10.96.0.10:80 Connection refused")


def test_parse_iperf3():
    out = json.dumps({"end": {"sum_received": {"bits_per_second": 2.95e9}}})
    assert measure.parse_iperf3(out) == pytest.approx(2.95)
    with pytest.raises(ValueError, match="unable to connect"):
        measure.parse_iperf3(json.dumps({"error": "unable to connect to server"}))


def test_own_process_usage():
    assert measure.cpu_seconds(os.getpid()) > 0 and measure.rss_kib(os.getpid()) > 1000
    assert os.getpid() in measure.tree(os.getppid())


def test_targets_and_ratios():
    rows = [Row("direct", "none", "-", rps=40000, p99_ms=0.2, gbps_1=20),
            Row("trellis-l4", "ztunnel", "1", rps=5000, p99_ms=2.0, gbps_1=3.0, rss_idle_mib=60),
            Row("stunnel", "pair", "1", rps=10000, p99_ms=1.0, gbps_1=3.0),
            Row("idle-1k", "ztunnel", "1", extra={"kib_per_connection": 12.0, "connections": 1000})]
    t = {name: verdict for name, verdict, _ in report.targets(rows)}
    assert t == {"L4 req/s >= 1.0x stunnel": "MISS", "L4 bulk >= 1.0x stunnel": "PASS",
                 "ztunnel RSS idle <= 40 MiB": "PASS", "idle-1k: <= 16 KiB per idle connection": "PASS"}
    text = report.render(rows)
    assert re.search(r"vs stunnel\s+0\.50x\s+2\.00x\s+1\.00x", text)
    assert re.search(r"trellis-l4\s+0\.12x\s+10\.00x\s+0\.15x", text)
