"""L4 AuthorizationPolicies in Istio's shape, normalised into small frozen types."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import _fields

ROOT_NAMESPACE = "trellis-system"


@dataclass(frozen=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    # L7 fields: only a waypoint can see them (see authz for how L4 treats them).
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    @property
    def has_l7(self) -> bool:
        return bool(self.methods or self.paths)


@dataclass(frozen=True)
class Rule:
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()


@dataclass(frozen=True)
class AuthzPolicy:
    namespace: str
    name: str
    action: str = "ALLOW"
    # None: no selector. An empty dict would select every workload of the namespace.
    selector: tuple[tuple[str, str], ...] | None = None
    target_refs: tuple[tuple[str, str], ...] = ()  # (kind, name)
    rules: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def dump(self) -> dict[str, Any]:
        d = asdict(self)
        d["selector"] = dict(self.selector) if self.selector is not None else None
        d["name"] = self.key
        return d


def _strs(v: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in (v or ()))


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in (v or ()))


def _source(obj: Any) -> Source:
    src = _fields.get(obj, "source", default=obj)
    return Source(principals=_strs(_fields.get(src, "principals")),
                  not_principals=_strs(_fields.get(src, "not_principals", "notPrincipals")),
                  namespaces=_strs(_fields.get(src, "namespaces")),
                  not_namespaces=_strs(_fields.get(src, "not_namespaces", "notNamespaces")))


def _operation(obj: Any) -> Operation:
    op = _fields.get(obj, "operation", default=obj)
    return Operation(ports=_ints(_fields.get(op, "ports")),
                     not_ports=_ints(_fields.get(op, "not_ports", "notPorts")),
                     methods=_strs(_fields.get(op, "methods")), paths=_strs(_fields.get(op, "paths")))


def from_resource(res: Any) -> AuthzPolicy:
    spec = res.spec
    sel = _fields.labels_of(_fields.get(spec, "selector"))
    refs = tuple((str(_fields.get(r, "kind")), str(_fields.get(r, "name")))
                 for r in _fields.get(spec, "target_refs", "targetRefs", default=[]))
    rules = tuple(Rule(sources=tuple(_source(f) for f in _fields.get(r, "from_", "from", "sources", default=[])),
                       operations=tuple(_operation(t) for t in _fields.get(r, "to", "operations", default=[])))
                  for r in _fields.get(spec, "rules", default=[]))
    return AuthzPolicy(namespace=res.namespace, name=res.name,
                       action=str(_fields.get(spec, "action", default="ALLOW")).upper(),
                       selector=tuple(sorted(sel.items())) if sel is not None else None,
                       target_refs=refs, rules=rules)
