"""The table, the ratios and the issue's targets (pure: rows in, text out)."""
from __future__ import annotations

from dataclasses import dataclass

from .run import L4_PEERS, L7_PEERS, Row

TARGETS_HEADER = "targets (issues 3, 11 and 14):"

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


@dataclass(frozen=True)
class Target:
    """One of the issues' targets as measured in one run: the figure, and the bound it must meet."""
    name: str
    value: float
    limit: float
    at_least: bool      # value >= limit passes; else value <= limit
    unit: str = "x"     # "x" for a ratio, else the figure's unit ("MiB each", "KiB (both ztunnels)")
    idle: bool = False  # measured before any load: with --repeat, only the first round's counts

    def passes(self, value: float | None = None) -> bool:
        v = self.value if value is None else value
        return v >= self.limit if self.at_least else v <= self.limit

    def number(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        return f"{v:.2f}x" if self.unit == "x" else f"{v:.{3 if v < 1 else 2 if v < 10 else 1}f}"

    def show(self, value: float | None = None) -> str:
        return self.number(value) if self.unit == "x" else f"{self.number(value)} {self.unit}"


def measured_targets(rows: list[Row]) -> list[Target]:
    """Every target of issues 3, 11 and 14 that these rows (one run, or one round) measured."""
    rows = _with_figures(rows)
    by = {r.scenario: r for r in rows}
    l4, st, en = by.get("trellis-l4"), by.get("stunnel"), by.get("envoy-hbone")
    out: list[Target] = []
    if l4 and st:
        out.append(Target("L4 req/s >= 1.0x stunnel", l4.rps / st.rps, 1.0, True))
        if l4.gbps_1 and st.gbps_1:
            out.append(Target("L4 bulk >= 1.0x stunnel", l4.gbps_1 / st.gbps_1, 1.0, True))
    if l4 and en:
        out.append(Target("L4 req/s >= 0.7x Envoy HBONE", l4.rps / en.rps, 0.7, True))
        out.append(Target("L4 p99 <= 2x Envoy HBONE", l4.p99_ms / en.p99_ms, 2.0, False))
    if l4 and l4.gbps_1 and l4.gbps_4:
        out.append(Target("L4 bulk x4 streams >= x1", l4.gbps_4 / l4.gbps_1, 1.0, True))
    if l4 and l4.rss_idle_mib:
        # two ztunnels are summed: the target is per ztunnel
        out.append(Target("ztunnel RSS idle <= 40 MiB", l4.rss_idle_mib / 2, 40, False, "MiB each", idle=True))
    churn, churn_en = by.get("churn/trellis-l4"), by.get("churn/envoy-hbone")
    if churn and churn_en and churn_en.rps:
        out.append(Target("churn req/s >= 0.5x Envoy HBONE", churn.rps / churn_en.rps, 0.5, True))
    if churn and churn.cpu_ms_per_req:
        out.append(Target("ztunnel CPU per new connection <= 0.6 ms", churn.cpu_ms_per_req, 0.6, False,
                          "ms (both ztunnels)"))
    wp, en7, ng7 = by.get("waypoint"), by.get("envoy-l7"), by.get("nginx-l7")
    if wp and en7:   # issue 11: the waypoint alone against the L7 peers, same app and wrk
        out.append(Target("waypoint req/s >= 1.0x envoy-l7", wp.rps / en7.rps, 1.0, True))
        out.append(Target("waypoint p99 <= 1.5x envoy-l7", wp.p99_ms / en7.p99_ms, 1.5, False))
    if wp and ng7:
        out.append(Target("waypoint req/s >= 0.5x nginx-l7", wp.rps / ng7.rps, 0.5, True))
    if wp and wp.rss_idle_mib:
        out.append(Target("waypoint RSS idle <= 45 MiB", wp.rss_idle_mib, 45, False, "MiB", idle=True))
    mesh_l7 = by.get("trellis-l7")
    if mesh_l7 and l4:
        out.append(Target("trellis-l7 req/s >= 0.5x trellis-l4", mesh_l7.rps / l4.rps, 0.5, True))
    for size in _idle_sizes(rows):  # the target is Trellis's; peer idle rows are for comparison
        kib = by[size].extra["kib_per_connection"]
        out.append(Target(f"{size}: <= 16 KiB per idle connection", kib, 16, False, "KiB (both ztunnels)"))
    return out


def targets(rows: list[Row]) -> list[tuple[str, str, str]]:
    """(target, PASS/MISS, figures) for each of the issues' targets that this run measured."""
    return [(t.name, "PASS" if t.passes() else "MISS", t.show()) for t in measured_targets(rows)]


def render(rows: list[Row]) -> str:
    parts = [table(rows), "", ratios(rows)]
    t = targets(rows)
    if t:
        parts += ["", TARGETS_HEADER] + [f"  {v:<4}  {name}  ({fig})" for name, v, fig in t]
    block = l7(rows)
    if block:
        parts += ["", block]
    return "\n".join(parts)
