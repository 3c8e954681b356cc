"""L4 AuthorizationPolicies, indexed for the destination side. Rules are the resource
model's own frozen types (meshcore.resources: Rule(from_, to), Source, Operation)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..resources import ROOT_NAMESPACE, Operation, Resource, Rule, Source  # noqa: F401 (re-exported)

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


def from_resource(res: Resource) -> AuthzPolicy:
    spec = res.spec
    return AuthzPolicy(namespace=res.namespace, name=res.name, action=spec.action,
                       selector=tuple(sorted(spec.selector.items())) if spec.selector is not None else None,
                       target_refs=tuple((r.kind, r.name) for r in spec.target_refs), rules=spec.rules)
