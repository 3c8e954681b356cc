"""Rendering for the CLI, kubectl style: an aligned table by default, `-o json|yaml` for
machines. Renderers take plain rows (list of dicts) and never fetch anything."""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import yaml

FORMATS = ("table", "json", "yaml")


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """columns: (HEADER, key) pairs; keys missing in a row show as '-'."""
    header = [h for h, _ in columns]
    body = [[cell(r.get(k)) for _, k in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["   ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join(lines)


def render(data: Any, fmt: str, columns: Sequence[tuple[str, str]] | None = None,
           rows: list[dict[str, Any]] | None = None) -> str:
    """`data` is what json/yaml print (the full object); `rows` what the table shows
    (defaults to `data` when that is already a list of rows)."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str)
    if fmt == "yaml":
        return yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False).rstrip()
    if fmt != "table":
        raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
    if columns is None:
        return yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False).rstrip()
    rows = rows if rows is not None else data
    if not rows:
        return "No resources found."
    return table(rows, columns)
