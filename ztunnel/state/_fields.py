"""Read resource specs whether they arrive as typed dataclasses or plain dicts."""
from __future__ import annotations

from typing import Any


def get(obj: Any, *names: str, default: Any = None) -> Any:
    """First present attribute / key among `names` (snake_case and camelCase spellings)."""
    if obj is None:
        return default
    for n in names:
        if isinstance(obj, dict):
            if n in obj and obj[n] is not None:
                return obj[n]
        elif getattr(obj, n, None) is not None:
            return getattr(obj, n)
    return default


def labels_of(selector: Any) -> dict[str, str] | None:
    """A selector as a plain label map; None means "no selector given"."""
    if selector is None:
        return None
    if isinstance(selector, dict) and "matchLabels" not in selector and "match_labels" not in selector:
        return dict(selector)
    inner = get(selector, "match_labels", "matchLabels")
    if inner is None and not isinstance(selector, dict):
        return None
    return dict(inner or {})


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Kubernetes equality selector: every selector label present with the same value."""
    return all(labels.get(k) == v for k, v in selector.items())
