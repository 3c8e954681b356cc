"""Config sources: where resources come from. Each source reads its world (a directory of
YAML, the Kubernetes API), validates every object with meshcore.resources (the same checks
and the same error messages whatever the source) and publishes the whole effective set to
the versioned store (controlplane/store.py), which keeps versions and notifies watchers."""
from __future__ import annotations

from typing import Iterable

from meshcore.resources import LoadResult, Resource, ResourceError, check_references
from meshcore.resources.loader import dedupe

from .workloads import pods_to_workloads


def settle(resources: Iterable[Resource], errors: Iterable[ResourceError] = ()) -> tuple[list[Resource], list[ResourceError]]:
    """What every source does before publishing: Pods become WorkloadEntries (the shape the
    data plane consumes), then the cross-object rules: one object per kind/namespace/name
    (the first wins, the duplicate is reported), one Service per clusterIP, one
    WorkloadEntry per address."""
    merged = dedupe(LoadResult(resources=pods_to_workloads(list(resources)), errors=list(errors)))
    return merged.resources, merged.errors + check_references(merged.resources)
