"""The benchmark suite starts, measures on a tiny run and writes its table and JSON."""
import json
import subprocess
import sys
from pathlib import Path

from bench import report
from bench.run import lab_dir

TRELLIS = str(Path(sys.executable).parent / "trellis")


def test_quick_bench_produces_a_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([TRELLIS, "bench", "--quick", "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for row in ("direct", "trellis-l4", "stunnel"):
        assert any(line.startswith(row) for line in res.stdout.splitlines()), res.stdout
    assert report.TARGETS_HEADER in res.stdout
    data = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in data["rows"]}
    assert set(rows) == {"direct", "trellis-l4", "stunnel"}
    for r in rows.values():
        assert r["rps"] > 0 and r["p99_ms"] > 0 and r["gbps_1"] > 0, r
    assert rows["trellis-l4"]["rss_idle_mib"] > 0 and rows["trellis-l4"]["cpu_ms_per_req"] > 0
    # the same TRELLIS_BENCH_DIR as the bench it started (another bench may be up on the default)
    assert not (lab_dir() / "lab.json").exists(), "the bench lab must be torn down"
