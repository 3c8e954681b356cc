"""A tiny declarative validator: each field spec turns a YAML value into a typed value or
records (path, message) problems. Unknown fields are errors at every depth."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable

Problems = list[tuple[str, str]]
Check = Callable[[Any, str, Problems], Any]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def _type_name(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def string(pattern: re.Pattern | None = None, what: str = "") -> Check:
    def check(v, path, problems):
        if not isinstance(v, str):
            problems.append((path, f"must be a string, got {_type_name(v)}"))
            return None
        if pattern is not None and not pattern.match(v):
            problems.append((path, f"{v!r} is not a valid {what}"))
            return None
        return v
    return check


def integer(lo: int, hi: int, what: str = "an integer") -> Check:
    def check(v, path, problems):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            problems.append((path, f"must be {what} {lo}-{hi}, got {v!r}"))
            return None
        return v
    return check


port = integer(1, 65535)


def ip_address(v, path, problems):
    try:
        return ipaddress.ip_address(v) if isinstance(v, str) else ipaddress.ip_address("bad")
    except ValueError:
        problems.append((path, f"must be an IPv4 or IPv6 address, got {v!r}"))
        return None


def enum(*values: str) -> Check:
    def check(v, path, problems):
        if v not in values:
            problems.append((path, f"must be one of {', '.join(values)}, got {v!r}"))
            return None
        return v
    return check


def anything(v, path, problems):
    return v


def list_of(item: Check) -> Check:
    def check(v, path, problems):
        if not isinstance(v, list):
            problems.append((path, f"must be a list, got {_type_name(v)}"))
            return None
        return tuple(item(x, f"{path}[{i}]", problems) for i, x in enumerate(v))
    return check


def str_map(key: Check = string(), value: Check = string()) -> Check:
    def check(v, path, problems):
        if not isinstance(v, dict):
            problems.append((path, f"must be a mapping, got {_type_name(v)}"))
            return None
        return {key(k, f"{path}.{k}", problems): value(x, f"{path}.{k}", problems) for k, x in v.items()}
    return check


def _label_key(v, path, problems):
    if not isinstance(v, str):
        problems.append((path, "label keys must be strings"))
        return None
    prefix, _, name = v.rpartition("/")
    if (prefix and not DNS_SUBDOMAIN.match(prefix)) or not LABEL_NAME.match(name):
        problems.append((path, f"{v!r} is not a valid label key"))
        return None
    return v


def _label_value(v, path, problems):
    if isinstance(v, bool) or not isinstance(v, (str, int)) or not LABEL_VALUE.match(str(v)):
        problems.append((path, f"{v!r} is not a valid label value (quote numbers and booleans)"))
        return None
    return str(v)


labels = str_map(_label_key, _label_value)


@dataclass(frozen=True)
class F:
    """A field: YAML name -> dataclass attribute ("" for a field accepted and not kept),
    its check, required or a default."""
    attr: str
    check: Check
    required: bool = False
    default: Any = None


def obj(cls: type, fields: dict[str, F], post: Callable[[Any, str, Problems], None] | None = None) -> Check:
    def check(v, path, problems):
        if v is None:
            v = {}
        if not isinstance(v, dict):
            problems.append((path, f"must be a mapping, got {_type_name(v)}"))
            return None
        before = len(problems)
        for k in v:
            if k not in fields:
                problems.append((f"{path}.{k}" if path else str(k),
                                 f"unknown field (allowed: {', '.join(fields)})"))
        kw = {}
        for name, f in fields.items():
            sub = f"{path}.{name}" if path else name
            if name in v and v[name] is not None:
                kw[f.attr] = f.check(v[name], sub, problems)
            elif f.required:
                problems.append((sub, "is required"))
            else:
                kw[f.attr] = f.default() if callable(f.default) else f.default
        kw.pop("", None)
        if len(problems) > before:
            return None
        out = cls(**kw)
        if post:
            post(out, path, problems)
        return out
    return check
