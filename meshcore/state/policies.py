"""AuthorizationPolicies, indexed for the destination side (ztunnel at L4, a waypoint at L7).
Rules are the resource model's own frozen types (meshcore.resources.authzpolicy:
Rule(from_, to, when), Source, Operation, Condition); action is ALLOW, DENY or AUDIT."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..mesh import applies_at_every_waypoint
from ..resources import ROOT_NAMESPACE, Resource
from ..resources.authzpolicy import Condition, Operation, Rule, Source, never_matches  # noqa: F401 (re-exported)
from ..resources.errors import ResourceError

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


def warnings(res: Resource) -> list[ResourceError]:
    """What in a valid AuthorizationPolicy applies to nothing or can never match, each naming
    the file, the object and the field path: a GatewayClass targetRef outside the root
    namespace, and values no request matches (resources.authzpolicy.never_matches)."""
    spec, source = res.spec, getattr(res, "source", "<api>")
    who = f"AuthorizationPolicy {res.namespace}/{res.name}"
    single = "targetRef" in ((getattr(res, "raw", None) or {}).get("spec") or {})
    out = [ResourceError(source, who, "spec.targetRef" if single else f"spec.targetRefs[{i}]",
                         f"a GatewayClass targetRef applies only from the root namespace {ROOT_NAMESPACE} "
                         "(Istio's rule); here it applies to nothing")
           for i, t in enumerate(spec.target_refs)
           if t.kind == "GatewayClass" and not applies_at_every_waypoint(res.namespace, t.kind, t.name)]
    return out + [ResourceError(source, who, path, why) for path, why in never_matches(spec)]
