"""Label selectors, as Kubernetes matches them (pure). Principal patterns: meshcore.mesh."""
from __future__ import annotations

from typing import Mapping


def matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """An absent selector matches everything; an empty one too (Kubernetes semantics)."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())

