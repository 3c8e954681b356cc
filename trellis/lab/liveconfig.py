"""kubectl-like apply/delete on the lab's live config dir: objects are replaced or removed
by (kind, namespace, name) wherever they are defined, so applying an object that already
exists in another file updates it instead of creating a duplicate."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from meshcore.resources import Resource, ResourceError, check_references, load_dir
from meshcore.resources.loader import yaml_files
from meshcore.resources.model import from_dict


def _key_of(doc) -> tuple | None:
    try:
        return from_dict(doc).key
    except Exception:  # an invalid document stays where it is
        return None


def _write_atomic(path: Path, docs: list) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    os.replace(tmp, path)  # the control plane never reads half a file


def _remove_keys(config_dir: Path, keys: set[tuple]) -> list[tuple]:
    """Remove the documents with these keys from every file; return the keys found."""
    found = []
    for f in yaml_files(config_dir):
        try:
            docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        except yaml.YAMLError:
            continue
        keep = []
        for d in docs:
            k = _key_of(d)
            if k in keys:
                found.append(k)
            else:
                keep.append(d)
        if len(keep) != len(docs):
            if keep:
                _write_atomic(f, keep)
            else:
                f.unlink()
    return found


def file_for(config_dir: Path, r: Resource) -> Path:
    return config_dir / f"{r.kind.lower()}-{r.namespace or 'cluster'}-{r.name}.yaml"


def _current(config_dir: Path) -> dict[tuple, Resource]:
    """The valid objects of the config dir by key (the first of duplicates, as load_dir)."""
    return {r.key: r for r in reversed(load_dir(config_dir).resources)}


def conflicts(config_dir: Path, resources: list[Resource]) -> list[ResourceError]:
    """What the control plane would refuse of `resources` once applied beside the rest of
    the config: the cross-object rules (a clusterIP or a WorkloadEntry address already taken)."""
    keys = {r.key for r in resources}
    merged = [r for r in load_dir(config_dir).resources if r.key not in keys] + list(resources)
    mine = {(r.source, r.display) for r in resources}
    return [e for e in check_references(merged) if (e.source, e.obj) in mine]


def apply(config_dir: Path, resources: list[Resource]) -> list[tuple[Resource, str]]:
    """Create or replace each object; one identical to what is there is left alone
    ("unchanged", as kubectl says: the file is not rewritten, nothing reloads)."""
    current = _current(config_dir)
    same = {r.key for r in resources if r.key in current and current[r.key].raw == r.raw}
    existing = set(_remove_keys(config_dir, {r.key for r in resources} - same))
    out = []
    for r in resources:
        if r.key in same:
            out.append((r, "unchanged"))
            continue
        _write_atomic(file_for(config_dir, r), [r.to_dict()])
        out.append((r, "configured" if r.key in existing else "created"))
    return out


def delete(config_dir: Path, resources: list[Resource]) -> tuple[list[Resource], list[Resource]]:
    found = set(_remove_keys(config_dir, {r.key for r in resources}))
    return [r for r in resources if r.key in found], [r for r in resources if r.key not in found]
