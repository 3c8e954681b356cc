"""Load resources from YAML text and directories. Every problem becomes a ResourceError;
valid objects always come back, whatever is wrong beside them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ResourceError, ResourceInvalid
from .model import Resource, from_dict

MAX_FILE = 8 * 1024 * 1024


@dataclass
class LoadResult:
    resources: list[Resource] = field(default_factory=list)
    errors: list[ResourceError] = field(default_factory=list)

    def extend(self, other: "LoadResult") -> None:
        self.resources += other.resources
        self.errors += other.errors


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML silently keeps the last one)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", k.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_documents(text: str, source: str) -> LoadResult:
    out = LoadResult()
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        out.errors.append(ResourceError(source, "file", "", f"malformed YAML: {where}{problem}"))
        return out
    for i, d in enumerate(docs):
        if d is None:
            continue
        try:
            out.resources.append(from_dict(d, source, i))
        except ResourceInvalid as exc:
            out.errors += exc.errors
    return out


def load_file(path: Path) -> LoadResult:
    try:
        if path.stat().st_size > MAX_FILE:
            return LoadResult(errors=[ResourceError(str(path), "file", "", f"larger than {MAX_FILE} bytes")])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return LoadResult(errors=[ResourceError(str(path), "file", "", f"cannot read: {exc}")])
    return parse_documents(text, str(path))


def yaml_files(path: Path) -> list[Path]:
    return sorted(p for p in Path(path).rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def load_dir(path: str | Path) -> LoadResult:
    root = Path(path)
    out = LoadResult()
    if not root.is_dir():
        out.errors.append(ResourceError(str(root), "directory", "", "no such directory"))
        return out
    for f in yaml_files(root):
        out.extend(load_file(f))
    return dedupe(out)


def dedupe(result: LoadResult) -> LoadResult:
    """The same kind/namespace/name twice: keep the first, report the second naming both places."""
    first: dict[tuple, Resource] = {}
    kept = []
    for r in result.resources:
        if r.key in first:
            result.errors.append(ResourceError(
                r.source, r.display, "", f"duplicate of the object in {first[r.key].source}"))
            continue
        first[r.key] = r
        kept.append(r)
    result.resources = kept
    return result


def check_references(resources: list[Resource]) -> list[ResourceError]:
    """Cross-object rules: one Service per clusterIP, one WorkloadEntry per address."""
    errors = []
    for kind, attr, what in (("Service", "cluster_ip", "clusterIP"), ("WorkloadEntry", "address", "address")):
        owner: dict = {}
        for r in resources:
            if r.kind != kind:
                continue
            value = getattr(r.spec, attr)
            if value is None:   # a headless or ExternalName Service has no address to share
                continue
            if value in owner:
                errors.append(ResourceError(r.source, r.display, f"spec.{what}",
                                            f"{value} is already used by {owner[value].display}"))
            else:
                owner[value] = r
    return errors
