"""Render deploy/helm/trellis offline with helm-python-sdk (Helm v4's own engine) into a
list of Kubernetes objects in Helm's install order, CRDs first.

Values compose as `helm install` does: the chart's values.yaml, then each -f file in
order, then each --set; values.schema.json is checked by the engine while rendering."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "trellis"
RELEASE = "trellis"
NAMESPACE = "trellis-system"
# Helm's InstallOrder (pkg/release/util/kind_sorter.go), for the kinds this chart makes;
# uninstall walks it backwards.
INSTALL_ORDER = ["Namespace", "PodDisruptionBudget", "ServiceAccount", "Secret", "ConfigMap",
                 "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                 "Service", "DaemonSet", "Deployment"]


class ChartError(Exception):
    """The chart could not be rendered: bad values, a values file, a template."""


def _helm():
    try:
        import helm_python
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ChartError(f"helm-python-sdk is not installed ({exc}): pip install helm-python-sdk") from exc
    return helm_python


def merge(base: dict, over: dict) -> dict:
    """Helm's coalescing for user values: maps merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def user_values(files: Iterable[Path] = (), sets: Iterable[str] = ()) -> dict:
    helm = _helm()
    values: dict[str, Any] = {}
    for f in files:
        try:
            loaded = yaml.safe_load(Path(f).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ChartError(f"{f}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ChartError(f"{f}: a values file must be a mapping, got {type(loaded).__name__}")
        values = merge(values, loaded)
    for s in sets:
        try:
            values = merge(values, helm.parse_set_string(s))
        except helm.HelmError as exc:
            raise ChartError(f"--set {s}: {exc}") from exc
    return values


def _order(obj: dict) -> int:
    kind = obj.get("kind", "")
    return INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)


def _docs(text: str, where: str) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise ChartError(f"{where}: rendered YAML does not parse: {exc}") from exc


def render(values: dict | None = None, *, chart: Path = CHART_DIR, release: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict]:
    """Every object the chart makes, CRDs included, in install order (stable within a kind)."""
    helm = _helm()
    try:
        with helm.Chart.load(str(chart)) as c:
            rendered = c.render(values or {}, name=release, namespace=namespace, is_install=True)
            crds = c.crds
    except helm.HelmError as exc:
        raise ChartError(str(exc).strip()) from exc
    objs = [d for crd in crds for d in _docs(crd["data"], crd["name"])]
    for name in sorted(rendered):
        if name.endswith((".yaml", ".yml")):
            objs += _docs(rendered[name], name)
    for o in objs:
        if o.get("kind") not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            o.setdefault("metadata", {}).setdefault("namespace", namespace)
    return sorted(objs, key=_order)


def namespace_object(namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "trellis"}}}


def to_yaml(objs: list[dict]) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objs)


def lint(chart: Path = CHART_DIR, values: dict | None = None, kube_version: str | None = None) -> dict:
    """`helm lint --strict`: {"messages": [{"severity", "path", "error"}], "errors": [...]}"""
    return _helm().lint(str(chart), values, strict=True, kube_version=kube_version)
