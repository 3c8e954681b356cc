"""The node as a whole from its workers' reports, pure (no I/O): counters summed per
series, pods merged per uid. The owner serves the result on /metrics and /pods.

Counters of a worker that died are kept (its last report), so node-wide counters never go
backwards when a worker is replaced; what it counted after its last report is lost.
"""
from __future__ import annotations

from typing import Any, Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]   # (sample name, sorted labels)


class CounterFamily:
    """One counter family's series, summed. (The text format writes a counter's `_created`
    as a gauge family of its own, which parse_counters leaves out: times are not summed.)"""

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.series: dict[SeriesKey, float] = {}

    def add(self, sample_name: str, labels: dict[str, str], value: float) -> None:
        k = (sample_name, tuple(sorted(labels.items())))
        self.series[k] = self.series.get(k, 0.0) + value

    def metric(self) -> Metric:
        m = Metric(self.name, self.documentation, "counter")
        for (sample_name, labels), value in sorted(self.series.items()):
            m.add_sample(sample_name, dict(labels), value)
        return m


def parse_counters(text: str) -> dict[str, CounterFamily]:
    """The counter families of one Prometheus text exposition (gauges are the owner's own)."""
    out: dict[str, CounterFamily] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type != "counter":
            continue
        mine = out.setdefault(fam.name, CounterFamily(fam.name, fam.documentation))
        for s in fam.samples:
            mine.add(s.name, s.labels, s.value)
    return out


def sum_counters(reports: Iterable[dict[str, CounterFamily]]) -> dict[str, CounterFamily]:
    total: dict[str, CounterFamily] = {}
    for report in reports:
        for name, fam in report.items():
            mine = total.setdefault(name, CounterFamily(name, fam.documentation))
            for (sample_name, labels), value in fam.series.items():
                mine.add(sample_name, dict(labels), value)
    return total


# A pod is as far along as its slowest worker: "serving" only when every worker serves it.
_STATE_ORDER = ("stopped", "starting", "waiting for config", "waiting for certificate", "draining", "serving")


def _rank(state: str) -> int:
    return _STATE_ORDER.index(state) if state in _STATE_ORDER else 0


def merge_pods(owned: list[dict[str, Any]], reports: dict[int, list[dict[str, Any]]], workers: int
               ) -> list[dict[str, Any]]:
    """Per pod the owner holds: the least advanced worker state ("not on worker N yet" while
    one has not reported it), open connections summed, and each worker's view."""
    by_worker = {i: {p["uid"]: p for p in pods} for i, pods in reports.items()}
    out = []
    for pod in owned:
        views, states, active = [], [], 0
        for i in range(workers):
            seen = by_worker.get(i, {}).get(pod["uid"])
            if seen is None:
                states.append(f"not on worker {i} yet")
                views.append({"worker": i, "state": "absent", "activeConnections": 0})
                continue
            states.append(seen["state"])
            active += seen.get("activeConnections", 0)
            views.append({"worker": i, "state": seen["state"], "activeConnections": seen.get("activeConnections", 0)})
        absent = [s for s in states if s.startswith("not on")]
        state = absent[0] if absent else min(states, key=_rank, default="starting")
        out.append(dict(pod, state=state, activeConnections=active, workers=views))
    return out
