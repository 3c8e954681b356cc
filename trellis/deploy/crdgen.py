"""CustomResourceDefinitions for the trellis.dev kinds, generated from meshcore.resources.

The resource model is the one source of truth: its checks are small closures made by the
factories in meshcore/resources/schema.py (`obj`, `list_of`, `string`, ...), so the
generator reads each closure's captured arguments (the field table of `obj`, the item of
`list_of`, the pattern of `string`) and turns them into an OpenAPI v3 structural schema.
A hand-written check (a module function such as `_selector`, or a closure made elsewhere)
is run once on a probe with its module's functions and its own captured functions wrapped:
the first check it hands the value to is the shape of its input. A check that hands the
value to nobody is described by the types it accepts. A check may instead state its own
schema as a `crd_schema` attribute (a port as an int or a numeric string, a refused field).
tests/trellis/deploy/test_deploy_crds.py fails when the committed CRDs differ from this output.
"""
from __future__ import annotations

import re
import types
from typing import Any, Callable

import yaml

GROUP = "trellis.dev"
FACTORIES = {"string", "integer", "enum", "list_of", "str_map", "obj"}
# Kubernetes compiles `pattern` with Go's RE2: no look-around and no back-references.
_NOT_RE2 = re.compile(r"\(\?[=!<]|\\[1-9]")


class SchemaExportError(Exception):
    """A check the generator cannot describe: the message names it and the field path."""


def _factory(check: Callable) -> str | None:
    q = getattr(check, "__qualname__", "")
    name, _, rest = q.partition(".<locals>.")
    if rest and name in FACTORIES and check.__module__ == "meshcore.resources.schema":
        return name
    return None


def _contents(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not filled yet (a closure that refers to itself)
        return None


def _cells(check: Callable) -> dict[str, Any]:
    return {n: _contents(c) for n, c in zip(check.__code__.co_freevars, check.__closure__ or ())}


class _Handed(Exception):
    def __init__(self, check: Callable):
        self.check = check


def _delegate(fn: Callable, probe: Any) -> Callable | None:
    """Run `fn` on `probe` with every function in its module wrapped; return the first
    check called with our `problems` list (the check `fn` hands its input to), if any."""
    problems: list = []
    g = fn.__globals__
    originals = {k: v for k, v in g.items() if isinstance(v, types.FunctionType) and v is not fn}
    # a closure's own captured checks too (max_items(check, n), a wrapped string check, ...)
    cells = [c for c in fn.__closure__ or () if isinstance(_contents(c), types.FunctionType)]
    captured = [c.cell_contents for c in cells]

    def wrap(f):
        def wrapper(*a, **k):
            if len(a) == 3 and a[2] is problems:
                raise _Handed(f)
            out = f(*a, **k)
            return wrap(out) if isinstance(out, types.FunctionType) else out
        wrapper.__wrapped__ = f  # checks built during the probe keep wrapped parts: unwrap them
        return wrapper

    try:
        g.update({k: wrap(v) for k, v in originals.items()})
        for c, f in zip(cells, captured):
            c.cell_contents = wrap(f)
        fn(probe, "", problems)
    except _Handed as h:
        return h.check
    except Exception:  # noqa: BLE001 - a probe a check rejects by raising tells us nothing
        return None
    finally:
        g.update(originals)
        for c, f in zip(cells, captured):
            c.cell_contents = f
    return None


def _accepts(fn: Callable, probe: Any) -> bool:
    problems: list = []
    try:
        return fn(probe, "", problems) is not None and not problems
    except Exception:  # noqa: BLE001
        return False


def _string(pattern, what=None) -> dict:
    out: dict[str, Any] = {"type": "string"}
    if pattern is not None and not _NOT_RE2.search(pattern.pattern):
        out["pattern"] = pattern.pattern
    return out


def schema_of(check: Callable, path: str = "spec") -> dict:
    """The OpenAPI v3 schema of the YAML values `check` accepts."""
    while hasattr(check, "__wrapped__"):
        check = check.__wrapped__
    own = getattr(check, "crd_schema", None)
    if own is not None:   # a check that states its own schema (what probes cannot tell)
        return dict(own)
    kind = _factory(check)
    if kind is not None:
        c = _cells(check)
        if kind == "string":
            return _string(c["pattern"])
        if kind == "integer":
            return {"type": "integer", "minimum": c["lo"], "maximum": c["hi"]}
        if kind == "enum":
            return {"type": "string", "enum": list(c["values"])}
        if kind == "list_of":
            return {"type": "array", "items": schema_of(c["item"], f"{path}[]")}
        if kind == "str_map":
            return {"type": "object", "additionalProperties": schema_of(c["value"], f"{path}.*")}
        fields = c["fields"]
        props = {name: schema_of(f.check, f"{path}.{name}") for name, f in fields.items()}
        out: dict[str, Any] = {"type": "object", "properties": props}
        required = [name for name, f in fields.items() if f.required]
        if required:
            out["required"] = required
        return out
    if not isinstance(check, types.FunctionType):
        raise SchemaExportError(f"{path}: {check!r} is not a check function")
    for probe in ({}, [], "probe", 1):
        inner = _delegate(check, probe)
        if inner is not None:
            return schema_of(inner, path)
    return _by_accepted_types(check, path)


def _by_accepted_types(check: Callable, path: str) -> dict:
    accepted = {t for t, probe in (("object", {}), ("array", []), ("integer", 1), ("number", 1.5), ("boolean", True))
                if _accepts(check, probe)}
    # a string check may want a particular form (an IP address, a principal, a port number): try a few
    if any(_accepts(check, s) for s in ("a", "10.0.0.1", "spiffe://td/ns/a/sa/b", "*", "80")):
        accepted.add("string")
    if accepted == {"object"}:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if accepted == {"string"}:
        if _accepts(check, "10.0.0.1") and _accepts(check, "fd00::1") and not _accepts(check, "a"):
            return {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
        return {"type": "string"}
    if accepted == {"string", "integer"}:
        return {"x-kubernetes-int-or-string": True}
    if accepted in ({"integer"}, {"number"}, {"boolean"}):
        return {"type": accepted.pop()}
    if accepted == {"integer", "number"}:
        return {"type": "number"}
    if accepted == {"array"}:
        return {"type": "array", "items": {"x-kubernetes-preserve-unknown-fields": True}}
    raise SchemaExportError(f"{path}: cannot tell what {check.__module__}.{check.__qualname__} accepts "
                            f"(it takes {sorted(accepted) or 'nothing probed'}); build it from "
                            "meshcore.resources.schema's factories so its shape can be exported")


def _plural(kind: str) -> str:
    low = kind.lower()
    if low.endswith("y") and low[-2:-1] not in "aeiou":
        return low[:-1] + "ies"
    return low + ("es" if low.endswith(("s", "x", "ch", "sh")) else "s")


def crd(k) -> dict:
    """One CustomResourceDefinition for a meshcore.resources Kind of our group."""
    group, _, version = k.api_version.partition("/")
    spec = schema_of(k.spec)
    top: dict[str, Any] = {"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        "spec": spec}}
    if k.spec_required:
        top["required"] = ["spec"]
    plural = _plural(k.kind)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"app.kubernetes.io/part-of": "trellis"}},
        "spec": {
            "group": group,
            "names": {"kind": k.kind, "listKind": f"{k.kind}List", "plural": plural,
                      "singular": k.kind.lower(), "categories": ["trellis"]},
            "scope": "Namespaced" if k.namespaced else "Cluster",
            "versions": [{"name": version, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": top}}],
        },
    }


def generate() -> dict[str, str]:
    """File name -> YAML text, one CRD per trellis.dev kind in meshcore.resources.KINDS."""
    from meshcore.resources import KINDS
    out = {}
    for (api, _kind), k in sorted(KINDS.items()):
        if api.partition("/")[0] != GROUP:
            continue
        doc = crd(k)
        text = ("# Generated by `trellis crds --write` from meshcore.resources: do not edit.\n"
                + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
        out[f"{doc['metadata']['name']}.yaml"] = text
    return out
