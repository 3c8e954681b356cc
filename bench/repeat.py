"""`trellis bench --repeat N`: the rounds' medians and spreads (pure: rounds of rows in, text out).

Each round runs every chosen scenario once, in order, and the rounds follow one another
(A B C A B C ...), so a disturbance on the shared machine lands on one round of every
scenario rather than on every round of one. Every ratio is taken within its round (Trellis
against the peer measured minutes apart, never against another round's peer) and only then
summarised: the median over the rounds and the spread (min-max). One lucky round proves
nothing; a target is met when its median is.
"""
from __future__ import annotations

import statistics
from dataclasses import fields

from . import report
from .run import Row

# the table's numeric columns (every Row field that holds a figure)
NUMERIC = [f.name for f in fields(Row) if f.name not in ("scenario", "proxy", "workers", "extra")]


def by_round(rows: list[Row]) -> list[list[Row]]:
    """The flat row list of a repeated run (each row knows its round), split into rounds."""
    rounds: dict[int, list[Row]] = {}
    for r in rows:
        rounds.setdefault(r.extra.get("round", 1), []).append(r)
    return [rounds[k] for k in sorted(rounds)]


def median_rows(rounds: list[list[Row]]) -> list[Row]:
    """One row per scenario (first-seen order): each figure the median over the rounds that
    measured it; a scenario that failed in every round stays a failed row."""
    order: list[str] = []
    seen: dict[str, list[Row]] = {}
    for rows in rounds:
        for r in rows:
            if r.scenario not in seen:
                order.append(r.scenario)
            seen.setdefault(r.scenario, []).append(r)
    out = []
    for name in order:
        good = [r for r in seen[name] if "failed" not in r.extra]
        if not good:
            last = seen[name][-1]
            out.append(Row(name, last.proxy, last.workers, extra={"failed": last.extra["failed"]}))
            continue
        m = Row(name, good[0].proxy, good[0].workers)
        for col in NUMERIC:
            values = [getattr(r, col) for r in good if getattr(r, col) is not None]
            if col == "rss_idle_mib":   # idle is before any load: later rounds follow earlier ones' load
                values = values[:1]
            setattr(m, col, float(statistics.median(values)) if values else None)
        extra = {k: statistics.median(v for r in good if isinstance(v := r.extra.get(k), (int, float)))
                 for k in good[0].extra if k != "round" and isinstance(good[0].extra[k], (int, float))}
        failed = len(seen[name]) - len(good)
        if failed:
            extra["rounds_failed"] = failed
        m.extra = extra
        out.append(m)
    return out


def target_spreads(rounds: list[list[Row]]) -> list[tuple[str, str, str]]:
    """(target, PASS/MISS on the median, "median [min-max], k/n rounds pass") for every target
    that at least one round measured; each round's figure comes from that round's rows only."""
    per: dict[str, list[report.Target]] = {}
    for rows in rounds:
        for t in report.measured_targets(rows):
            if not (t.idle and per.get(t.name)):   # idle memory: before any load, the first round that has it
                per.setdefault(t.name, []).append(t)
    out = []
    for name, ts in per.items():
        values = [t.value for t in ts]
        med, first = statistics.median(values), ts[0]
        passed = sum(t.passes() for t in ts)
        out.append((name, "PASS" if first.passes(med) else "MISS",
                    f"median {first.show(med)}, spread {first.number(min(values))} - {first.number(max(values))}, "
                    f"{passed}/{len(ts)} rounds pass"))
    return out


def render(rows: list[Row]) -> str:
    rounds = by_round(rows)
    n = len(rounds)
    parts = [f"medians over {n} rounds (each figure the median of the rounds that measured it; RSS IDLE the first's):",
             report.table(median_rows(rounds))]
    t = target_spreads(rounds)
    if t:
        parts += ["", f"{report.TARGETS_HEADER[:-1]}, median of {n} rounds, ratios taken within each round "
                      "(spread: min - max):"]
        parts += [f"  {v:<4}  {name}  ({fig})" for name, v, fig in t]
    for i, r in enumerate(rounds, 1):
        ratios = report.ratios(r)
        if ratios:
            parts += ["", f"round {i}:", ratios]
    return "\n".join(parts)
