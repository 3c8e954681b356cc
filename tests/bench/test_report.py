"""The report's ratios against every measured peer, the L7 block, churn and idle comparisons."""
import re

from bench import report
from bench.idleclient import script as idle_client
from bench.run import ALL, L4_PEERS, L7_PEERS, QUICK, Row


def _rows() -> list[Row]:
    return [Row("direct", "none", "-", rps=40000, p99_ms=0.5, gbps_1=20, gbps_4=16),
            Row("trellis-l4", "ztunnel x2", "1 process each", rps=4000, p99_ms=8.0, gbps_1=1.0, gbps_4=1.0),
            Row("stunnel", "stunnel pair", "1 process (threads)", rps=8000, p99_ms=4.0, gbps_1=2.0, gbps_4=4.0),
            Row("envoy-hbone", "envoy pair", "--concurrency 1", rps=16000, p99_ms=2.0, gbps_1=4.0, gbps_4=5.0),
            Row("envoy-l7", "envoy HCM", "--concurrency 1", rps=10000, p99_ms=2.5, cpu_ms_per_req=0.08),
            Row("haproxy-l7", "haproxy", "nbthread 1", rps=20000, p99_ms=1.0, cpu_ms_per_req=0.04),
            Row("churn/direct", "new", "-", rps=8000, p99_ms=2.0),
            Row("churn/trellis-l4", "new", "1 process each", rps=500, p99_ms=40.0, cpu_ms_per_req=3.0),
            Row("churn/stunnel", "new", "1 process (threads)", rps=1000, p99_ms=20.0, cpu_ms_per_req=1.5),
            Row("churn/envoy-hbone", "new", "--concurrency 1", rps=2000, p99_ms=10.0, cpu_ms_per_req=0.5),
            Row("idle-1000", "ztunnel x2", "1 process each", extra={"kib_per_connection": 28.0, "connections": 1000}),
            Row("idle-1000/stunnel", "stunnel pair", "1", extra={"kib_per_connection": 70.0, "connections": 1000}),
            Row("idle-1000/envoy-hbone", "envoy pair", "1", extra={"kib_per_connection": 14.0, "connections": 1000})]


def _block(text: str, header: str) -> str:
    """The header line and the indented lines under it."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(header))
    j = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith("  ")), len(lines))
    return "\n".join(lines[i:j])


def test_trellis_l4_is_compared_to_every_measured_peer():
    text = report.render(_rows())
    block = _block(text, "trellis-l4 vs peers")
    assert re.search(r"vs stunnel\s+0\.50x\s+2\.00x\s+0\.50x\s+0\.25x", block)
    assert re.search(r"vs envoy-hbone\s+0\.25x\s+4\.00x\s+0\.25x\s+0\.20x", block)
    assert re.search(r"vs envoy-l7\s+0\.40x\s+3\.20x\s+-\s+-", block)
    assert re.search(r"vs haproxy-l7\s+0\.20x\s+8\.00x\s+-\s+-", block)
    assert "nginx-l7" not in block, "a peer that was not measured gets no ratio"


def test_l7_peers_have_their_own_block_against_direct():
    text = report.render(_rows())
    block = _block(text, "L7:")
    assert re.search(r"envoy-l7\s+0\.25x\s+5\.00x\s+0\.08", block)
    assert re.search(r"haproxy-l7\s+0\.50x\s+2\.00x\s+0\.04", block)
    assert "trellis-l7" not in block, "not measured: no row"
    # and they are not repeated in the L4 "vs direct" block
    assert "envoy-l7" not in _block(text, "vs direct")


def test_churn_and_idle_rows_are_compared_to_the_peers():
    text = report.render(_rows())
    churn = _block(text, "churn: trellis-l4 vs")
    assert re.search(r"vs stunnel\s+0\.50x\s+2\.00x\s+2\.00x", churn)
    assert re.search(r"vs envoy-hbone\s+0\.25x\s+4\.00x\s+6\.00x", churn)
    idle = _block(text, "idle-1000: trellis-l4 vs peers")
    assert re.search(r"vs stunnel\s+0\.40x\s+\(28\.0 vs 70\.0 KiB\)", idle)
    assert re.search(r"vs envoy-hbone\s+2\.00x\s+\(28\.0 vs 14\.0 KiB\)", idle)


def test_the_idle_target_judges_trellis_only():
    targets = {name: verdict for name, verdict, _ in report.targets(_rows())}
    assert targets["idle-1000: <= 16 KiB per idle connection"] == "MISS"
    assert not any("stunnel:" in name or "envoy-hbone:" in name for name in targets)


def test_without_l7_rows_there_is_no_l7_block():
    text = report.render([r for r in _rows() if r.scenario not in L7_PEERS])
    assert "L7:" not in text and "trellis-l7" not in text


def test_trellis_l7_is_compared_to_direct_and_judged_against_trellis_l4():
    rows = _rows() + [Row("trellis-l7", "ztunnel x2 + waypoint", "1 process each", rps=2400, p99_ms=16.0,
                          cpu_ms_per_req=0.5, extra={"v2_share": 0.1, "requests": 24000})]
    text = report.render(rows)
    assert re.search(r"trellis-l7\s+0\.06x\s+32\.00x\s+0\.5", _block(text, "L7:"))
    assert re.search(r"trellis-l7 vs trellis-l4 \(req/s, p99\): 0\.60x 2\.00x\s+PASS\s+L7 req/s >= 0\.5x", text)
    rows[-1].rps = 1900
    assert re.search(r"trellis-l7 vs trellis-l4 .*: 0\.47x .*MISS", report.render(rows))
    assert "trellis-l7: v2_share=0.1, requests=24000" in text
    failed = _rows() + [Row("trellis-l7", "-", "-", extra={"failed": "no waypoint"})]
    assert "trellis-l7 vs trellis-l4" not in report.render(failed)


def test_scenarios_and_the_quick_smoke():
    assert [s for s in ALL if s in L4_PEERS + L7_PEERS] == L4_PEERS + L7_PEERS
    assert QUICK == ["direct", "trellis-l4", "stunnel"]


def test_idle_client_connects_where_it_is_told():
    script = idle_client(3, "127.0.0.1", 18080)
    assert "create_connection(('127.0.0.1',18080)" in script and "range(3)" in script
    compile(script, "idle_client", "exec")


def test_no_empty_blocks():
    text = report.render([Row("direct", "none", "-", rps=40000, p99_ms=0.5),
                          Row("nginx-l7", "nginx", "worker_processes 1", rps=10000, p99_ms=2.0)])
    assert "vs direct (req/s" not in text and "trellis-l4 vs peers" not in text
    assert re.search(r"nginx-l7\s+0\.25x\s+4\.00x", _block(text, "L7:"))


def test_a_failed_row_is_shown_but_never_in_a_ratio_or_target():
    from bench.report import render
    from bench.run import Row
    rows = [Row("trellis-l4", "ztunnel x2", "1", rps=5000, p99_ms=5.0),
            Row("idle-10000", "ztunnel x2", "1", extra={"kib_per_connection": 14.0, "connections": 10000}),
            Row("idle-10000/stunnel", "-", "-", extra={"failed": "stunnel: could not open 10000 connections"}),
            Row("stunnel", "-", "-", extra={"failed": "stunnel exited"})]
    text = render(rows)
    assert "idle-10000/stunnel: failed=stunnel: could not open 10000 connections" in text
    assert "vs stunnel" not in text and "L4 req/s >= 1.0x stunnel" not in text
    assert "PASS  idle-10000: <= 16 KiB per idle connection" in text
