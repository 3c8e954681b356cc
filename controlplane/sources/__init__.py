"""Config sources: where resources come from. Each source reads its world (a directory of
YAML, the Kubernetes API), validates every object with meshcore.resources (the same checks
and the same error messages whatever the source) and publishes the whole effective set to
the versioned store (controlplane/store.py), which keeps versions and notifies watchers."""
from __future__ import annotations

from typing import Iterable

from meshcore.resources import LoadResult, Resource, ResourceError, check_references
from meshcore.resources.loader import dedupe


def settle(resources: Iterable[Resource], errors: Iterable[ResourceError] = ()) -> tuple[list[Resource], list[ResourceError]]:
    """The cross-object rules every source applies before publishing: one object per
    kind/namespace/name (the first wins, the duplicate is reported), one Service per
    clusterIP, one WorkloadEntry per address."""
    merged = dedupe(LoadResult(resources=list(resources), errors=list(errors)))
    return merged.resources, merged.errors + check_references(merged.resources)
