"""The table, the ratios and the issue's targets (pure: rows in, text out)."""
from __future__ import annotations

from .run import L4_PEERS, L7_PEERS, Row

COLUMNS = [("scenario", "SCENARIO"), ("workers", "WORKERS"), ("rps", "REQ/S"), ("p50_ms", "P50 MS"),
           ("p99_ms", "P99 MS"), ("max_ms", "MAX MS"), ("gbps_1", "GBIT/S x1"), ("gbps_4", "GBIT/S x4"),
           ("cpu_ms_per_req", "CPU MS/REQ"), ("cpu_s_per_gb", "CPU S/GB"), ("rss_idle_mib", "RSS IDLE MIB"),
           ("rss_load_mib", "RSS LOAD MIB")]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"
    return str(v)


def table(rows: list[Row]) -> str:
    cells = [[h for _, h in COLUMNS]] + [[_fmt(getattr(r, k)) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(COLUMNS))).rstrip() for c in cells]
    for r in rows:
        if r.extra:
            lines.append(f"{r.scenario}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in r.extra.items()))
    return "\n".join(lines)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _with_figures(rows: list[Row]) -> list[Row]:
    """Rows with figures: a scenario that failed shows in the table, never in a ratio."""
    return [r for r in rows if "failed" not in r.extra]


def _idle_sizes(rows: list[Row]) -> list[str]:
    return [r.scenario for r in rows if r.scenario.startswith("idle-") and "/" not in r.scenario]


def ratios(rows: list[Row]) -> str:
    rows = _with_figures(rows)
    by = {r.scenario: r for r in rows}
    out = []
    direct = by.get("direct")
    l4_rows = [r for r in rows if r.scenario in ("trellis-l4", *L4_PEERS)]
    if direct and l4_rows:
        out.append("vs direct (req/s, p99, Gbit/s x1):")
        for r in l4_rows:
            out.append(f"  {r.scenario:<14} {_ratio(r.rps, direct.rps):>7} {_ratio(r.p99_ms, direct.p99_ms):>7} "
                       f"{_ratio(r.gbps_1, direct.gbps_1):>7}")
    l4 = by.get("trellis-l4")
    measured = [by[p] for p in (*L4_PEERS, *L7_PEERS) if p in by]
    if l4 and measured:
        out.append("trellis-l4 vs peers (req/s, p99, Gbit/s x1, Gbit/s x4; no bulk runs through the L7 ones):")
        for r in measured:
            out.append(f"  vs {r.scenario:<11} {_ratio(l4.rps, r.rps):>7} {_ratio(l4.p99_ms, r.p99_ms):>7} "
                       f"{_ratio(l4.gbps_1, r.gbps_1):>7} {_ratio(l4.gbps_4, r.gbps_4):>7}")
    churn = by.get("churn/trellis-l4")
    others = [by[f"churn/{p}"] for p in ("direct", *L4_PEERS) if f"churn/{p}" in by]
    if churn and others:
        out.append("churn: trellis-l4 vs the direct path and the peers (req/s, p99, CPU ms/req):")
        for r in others:
            out.append(f"  vs {r.scenario.split('/', 1)[1]:<11} {_ratio(churn.rps, r.rps):>7} "
                       f"{_ratio(churn.p99_ms, r.p99_ms):>7} {_ratio(churn.cpu_ms_per_req, r.cpu_ms_per_req):>7}")
    for size in _idle_sizes(rows):
        zt = by[size]
        idle_peers = [by[f"{size}/{p}"] for p in L4_PEERS if f"{size}/{p}" in by]
        if idle_peers:
            mine = zt.extra["kib_per_connection"]
            out.append(f"{size}: trellis-l4 vs peers (KiB per idle connection, both sides summed):")
            for r in idle_peers:
                theirs = r.extra["kib_per_connection"]
                out.append(f"  vs {r.scenario.split('/', 1)[1]:<11} {_ratio(mine, theirs):>7}   "
                           f"({mine:.1f} vs {theirs:.1f} KiB)")
    return "\n".join(out)


def l7(rows: list[Row]) -> str:
    """The L7 peers and trellis-l7 against the direct path; trellis-l7 against trellis-l4
    (issue 11's target: at least half its req/s)."""
    rows = _with_figures(rows)
    by = {r.scenario: r for r in rows}
    direct = by.get("direct")
    measured = [by[p] for p in (*L7_PEERS, "trellis-l7") if p in by]
    out = []
    if measured:
        out.append("L7: HTTP/1.1 proxies with retries, one worker each (req/s and p99 vs direct; CPU ms/req):")
        for r in measured:
            out.append(f"  {r.scenario:<14} {_ratio(r.rps, direct and direct.rps):>7} "
                       f"{_ratio(r.p99_ms, direct and direct.p99_ms):>7} {_fmt(r.cpu_ms_per_req):>7}")
    mesh_l7, l4 = by.get("trellis-l7"), by.get("trellis-l4")
    if mesh_l7 and l4:
        verdict = "PASS" if mesh_l7.rps >= 0.5 * l4.rps else "MISS"
        out.append(f"trellis-l7 vs trellis-l4 (req/s, p99): {_ratio(mesh_l7.rps, l4.rps)} "
                   f"{_ratio(mesh_l7.p99_ms, l4.p99_ms)}   {verdict}  L7 req/s >= 0.5x trellis-l4 (issue 11)")
    return "\n".join(out)


def targets(rows: list[Row]) -> list[tuple[str, str, str]]:
    """(target, PASS/MISS/n.a., figures) for each of the issue's targets that this run measured."""
    rows = _with_figures(rows)
    by = {r.scenario: r for r in rows}
    l4, st, en = by.get("trellis-l4"), by.get("stunnel"), by.get("envoy-hbone")
    out = []

    def check(name, ok, figures):
        out.append((name, "PASS" if ok else "MISS", figures))

    if l4 and st:
        check("L4 req/s >= 1.0x stunnel", l4.rps >= st.rps, _ratio(l4.rps, st.rps))
        if l4.gbps_1 and st.gbps_1:
            check("L4 bulk >= 1.0x stunnel", l4.gbps_1 >= st.gbps_1, _ratio(l4.gbps_1, st.gbps_1))
    if l4 and en:
        check("L4 req/s >= 0.5x Envoy HBONE", l4.rps >= 0.5 * en.rps, _ratio(l4.rps, en.rps))
        check("L4 p99 <= 2x Envoy HBONE", l4.p99_ms <= 2 * en.p99_ms, _ratio(l4.p99_ms, en.p99_ms))
    if l4 and l4.rss_idle_mib:
        # two ztunnels are summed: the target is per ztunnel
        check("ztunnel RSS idle <= 40 MiB", l4.rss_idle_mib / 2 <= 40, f"{l4.rss_idle_mib / 2:.1f} MiB each")
    for size in _idle_sizes(rows):  # the target is Trellis's; peer idle rows are for comparison
        kib = by[size].extra["kib_per_connection"]
        check(f"{size}: <= 16 KiB per idle connection", kib <= 16, f"{kib:.1f} KiB (both ztunnels)")
    return out


def render(rows: list[Row]) -> str:
    parts = [table(rows), "", ratios(rows)]
    t = targets(rows)
    if t:
        parts += ["", "targets (issue 3):"] + [f"  {v:<4}  {name}  ({fig})" for name, v, fig in t]
    block = l7(rows)
    if block:
        parts += ["", block]
    return "\n".join(parts)
