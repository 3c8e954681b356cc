"""trellis-l7 for real, on a tiny run: the same wrk as trellis-l4 through the mesh and the
waypoint, the 90/10 split seen by the waypoint's own counters, the row in the report."""
import json
import math
import subprocess
import sys
from pathlib import Path

from bench.run import lab_dir

TRELLIS = str(Path(sys.executable).parent / "trellis")


def test_trellis_l7_runs_through_the_waypoint_beside_trellis_l4(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([TRELLIS, "bench", "--scenarios", "trellis-l4,trellis-l7", "--duration", "2",
                          "--connections", "4", "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = {r["scenario"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"trellis-l4", "trellis-l7"}
    l7 = rows["trellis-l7"]
    assert l7["rps"] > 0 and l7["p99_ms"] > 0 and l7["errors"] == 0, l7
    assert l7["cpu_ms_per_req"] > 0 and l7["gbps_1"] is None   # request/response only
    # every request went through the waypoint, and its route split them 90/10
    n, share = l7["extra"]["requests"], l7["extra"]["v2_share"]
    assert n >= l7["rps"] * 2 * 0.5, (n, l7["rps"])
    assert abs(share - 0.1) <= 5 * math.sqrt(0.09 / n), (share, n)   # binomial, 5 sd
    assert 0 < l7["extra"]["waypoint_rss_idle_mib"] <= 45   # issue 11's memory target
    assert "trellis-l7 vs trellis-l4 (req/s, p99):" in res.stdout
    assert not (lab_dir() / "lab.json").exists(), "the bench lab must be torn down"
