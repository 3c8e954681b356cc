"""Resource: one validated Kubernetes-style object, and `from_dict` that builds it."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import ResourceError, ResourceInvalid
from .kinds import KINDS
from .schema import DNS_SUBDOMAIN, F, labels, obj, str_map, string

# Set by the API server or by controllers; accepted so that `kubectl get -o yaml` output loads.
IGNORED_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "ownerReferences",
                    "finalizers", "generateName", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink")


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    namespace: str | None
    name: str
    labels: dict = field(default_factory=dict, compare=False, hash=False)
    annotations: dict = field(default_factory=dict, compare=False, hash=False)
    spec: Any = field(default=None, compare=False, hash=False)
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    source: str = field(default="<api>", compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace or "", self.name)

    @property
    def display(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def to_dict(self) -> dict:
        return copy.deepcopy(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resource) and self.key == other.key and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.key)


def _meta_fields(namespaced: bool) -> dict[str, F]:
    fields = {"name": F("name", string(DNS_SUBDOMAIN, "name (lowercase letters, digits, '-', '.')"), required=True),
              "labels": F("labels", labels, default=dict),
              "annotations": F("annotations", str_map(), default=dict)}
    if namespaced:
        fields["namespace"] = F("namespace", string(DNS_SUBDOMAIN, "namespace"), default="default")
    for k in IGNORED_METADATA:
        fields[k] = F(k, lambda v, p, e: None)
    return fields


_META = {ns: obj(dict, _meta_fields(ns)) for ns in (True, False)}


def describe(d: Any, index: int | None = None) -> str:
    """How to name a document in an error before it is known to be valid."""
    if isinstance(d, dict):
        meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
        kind, name, ns = d.get("kind"), meta.get("name"), meta.get("namespace")
        if isinstance(kind, str) and isinstance(name, str):
            return f"{kind} {ns}/{name}" if isinstance(ns, str) else (
                f"{kind} default/{name}" if kind not in ("Namespace",) else f"{kind} {name}")
    return f"document {index + 1}" if index is not None else "object"


def from_dict(d: Any, source: str = "<api>", index: int | None = None) -> Resource:
    who = describe(d, index)
    errs = lambda problems: ResourceInvalid([ResourceError(source, who, p, m) for p, m in problems])
    if not isinstance(d, dict):
        raise errs([("", f"must be a mapping with apiVersion, kind, metadata and spec, got {type(d).__name__}")])
    problems: list[tuple[str, str]] = []
    api, kind = d.get("apiVersion"), d.get("kind")
    if not isinstance(api, str) or not isinstance(kind, str):
        raise errs([("apiVersion" if not isinstance(api, str) else "kind", "is required (a string)")])
    k = KINDS.get((api, kind))
    if k is None:
        known = ", ".join(f"{a} {n}" for a, n in KINDS)
        raise errs([("", f"unknown kind {api} {kind} (known: {known})")])
    meta = _META[k.namespaced](d.get("metadata"), "metadata", problems)
    if meta is not None and k.meta_check is not None:
        k.meta_check(meta, problems)
    if "metadata" not in d:
        problems.append(("metadata", "is required"))
    spec = None
    if k.top_level:  # no spec (EndpointSlice), or spec and status read together (Pod)
        spec = k.spec({f: v for f, v in d.items() if f not in ("apiVersion", "kind", "metadata")}, "", problems)
    else:
        allowed = ("apiVersion", "kind", "metadata", "spec") + (("status",) if k.status else ())
        for top in d:
            if top not in allowed:
                problems.append((str(top), f"unknown field (allowed: {', '.join(allowed)})"))
        if d.get("spec") is None and k.spec_required:
            problems.append(("spec", "is required"))
        else:
            spec = k.spec(d.get("spec") or {}, "spec", problems)
    if problems or meta is None:
        raise errs(problems or [("metadata", "is invalid")])
    raw = copy.deepcopy(d)
    ns = meta.get("namespace") if k.namespaced else None
    if k.namespaced:
        raw.setdefault("metadata", {})["namespace"] = ns
    return Resource(api, kind, ns, meta["name"], meta["labels"], meta["annotations"], spec, raw, source)
