"""Label selectors and principal patterns, as Istio matches them (pure)."""
from __future__ import annotations

from typing import Mapping


def matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """An absent selector matches everything; an empty one too (Kubernetes semantics)."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def principal_matches(pattern: str, principal: str | None) -> bool:
    """Exact, `*` (any authenticated principal), `prefix*` or `*suffix`."""
    if principal is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return principal.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return principal.endswith(pattern[1:])
    return principal == pattern
