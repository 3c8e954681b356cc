"""`trellis bench`: one command that brings up the bench lab, measures, tears down, reports."""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import click

from . import report
from . import repeat as repeat_report
from .run import ALL, QUICK, Bench, Options, rows_to_json

RESULTS = Path(__file__).parent / "results"


def _machine() -> dict:
    model = ""
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(), "python": platform.python_version()}


@click.command("bench")
@click.option("--quick", is_flag=True, help=f"tiny run ({', '.join(QUICK)}, 1 s each): the CI smoke test")
@click.option("--duration", type=float, default=None, help="seconds per load run (default 10, quick 1)")
@click.option("--connections", type=int, default=None, help="wrk connections (default 16, quick 4)")
@click.option("--scenarios", default=None, help=f"comma-separated subset of: {', '.join(ALL)}")
@click.option("--repeat", type=click.IntRange(1, 20), default=1,
              help="rounds of the chosen scenarios, one after another; reports medians and spreads")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="JSON file (default bench/results/<UTC time>.json)")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def bench(quick, duration, connections, scenarios, repeat, out, output):
    """Benchmark Trellis against the direct path and peer proxies, on this machine, now.

    The lab's kernel names start with $TRELLIS_BENCH_PREFIX (default tbench) and its state
    lives in $TRELLIS_BENCH_DIR (default /run/trellis/bench): set both to run beside another bench."""
    if os.geteuid() != 0:
        raise click.ClickException("trellis bench builds a lab: run it as root")
    names = scenarios.split(",") if scenarios else (QUICK if quick else ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise click.BadParameter(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(ALL)}", param_hint="--scenarios")
    opts = Options(duration=duration or (1.0 if quick else 10.0), connections=connections or (4 if quick else 16),
                   scenarios=names, quick=quick, repeat=repeat)
    rows = Bench(opts, echo=lambda s: click.echo(s, err=True)).run()
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": _machine(),
            "options": {"duration": opts.duration, "connections": opts.connections, "scenarios": names, "repeat": repeat}}
    data = rows_to_json(rows, meta)
    out = out or RESULTS / f"{meta['date'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(data)
    click.echo(data if output == "json" else (repeat_report.render(rows) if repeat > 1 else report.render(rows)))
    click.echo(f"\nwrote {out}", err=True)
    failed = sorted({r.scenario for r in rows if "failed" in r.extra})
    if failed:
        raise click.ClickException(f"{len(failed)} scenario(s) could not be measured: {', '.join(failed)}")
