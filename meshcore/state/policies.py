"""AuthorizationPolicies, indexed for the destination side (ztunnel at L4, a waypoint at L7).
Rules are the resource model's own frozen types (meshcore.resources.authzpolicy:
Rule(from_, to, when), Source, Operation, Condition); action is ALLOW, DENY or AUDIT."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..resources import ROOT_NAMESPACE, Resource
from ..resources.authzpolicy import Condition, Operation, Rule, Source  # noqa: F401 (re-exported)

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
