"""Gateway API route filters (HTTPRouteFilter / GRPCRouteFilter): header modifiers, redirect
and URL rewrite, validated with the spec's CEL rules and messages."""
from __future__ import annotations

from dataclasses import dataclass

from .gateway import Problems, bounded_string, header_name, max_items, precise_hostname, unique
from .schema import F, _type_name, enum, list_of, obj, port


@dataclass(frozen=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class PathModifier:
    type: str
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None


@dataclass(frozen=True)
class RequestRedirect:
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True)
class URLRewrite:
    hostname: str | None = None
    path: PathModifier | None = None


_header = obj(dict, {"name": F("name", header_name, required=True),
                     "value": F("value", bounded_string(None, "header value", 4096), required=True)})


def _header_list(v, path, problems):
    out = max_items(list_of(_header), 16)(v, path, problems)
    if out is None or None in out:
        return None
    unique(out, lambda h: h["name"], path, "header", problems)
    return tuple((h["name"], h["value"]) for h in out)


def _modifier_post(m: HeaderModifier, path: str, problems: Problems) -> None:
    """"Only one action for a given header name is permitted" (names are case-insensitive)."""
    seen: dict[str, str] = {}
    for action, names in (("set", [n for n, _ in m.set]), ("add", [n for n, _ in m.add]), ("remove", m.remove)):
        for i, name in enumerate(names):
            key = name.lower()
            if key in seen:
                problems.append((f"{path}.{action}[{i}]", f"header {name!r} already has an action "
                                                          f"({seen[key]}); one action per header name"))
            seen[key] = action


header_modifier = obj(HeaderModifier, {
    "set": F("set", _header_list, default=tuple),
    "add": F("add", _header_list, default=tuple),
    "remove": F("remove", max_items(list_of(header_name), 16), default=tuple)}, post=_modifier_post)


def _path_modifier_post(m: PathModifier, path: str, problems: Problems) -> None:
    for t, attr, yaml in (("ReplaceFullPath", "replace_full_path", "replaceFullPath"),
                          ("ReplacePrefixMatch", "replace_prefix_match", "replacePrefixMatch")):
        if m.type == t and getattr(m, attr) is None:
            problems.append((f"{path}.{yaml}", f"{yaml} must be specified when type is set to '{t}'"))
        if m.type != t and getattr(m, attr) is not None:
            problems.append((f"{path}.{yaml}", f"type must be '{t}' when {yaml} is set"))


_path_modifier = obj(PathModifier, {
    "type": F("type", enum("ReplaceFullPath", "ReplacePrefixMatch"), required=True),
    "replaceFullPath": F("replace_full_path", bounded_string(None, "path", 1024, 0)),
    "replacePrefixMatch": F("replace_prefix_match", bounded_string(None, "path", 1024, 0))},
    post=_path_modifier_post)


def _status(v, path, problems):
    if v not in (301, 302, 303, 307, 308) or isinstance(v, bool):
        problems.append((path, f"must be one of 301, 302, 303, 307, 308, got {v!r}"))
        return None
    return v


request_redirect = obj(RequestRedirect, {
    "scheme": F("scheme", enum("http", "https")),
    "hostname": F("hostname", precise_hostname),
    "path": F("path", _path_modifier),
    "port": F("port", port),
    "statusCode": F("status_code", _status, default=302)})
url_rewrite = obj(URLRewrite, {"hostname": F("hostname", precise_hostname), "path": F("path", _path_modifier)})

_ALL_MEMBERS = {"requestHeaderModifier": "RequestHeaderModifier", "responseHeaderModifier": "ResponseHeaderModifier",
                "requestRedirect": "RequestRedirect", "urlRewrite": "URLRewrite", "requestMirror": "RequestMirror",
                "extensionRef": "ExtensionRef", "cors": "CORS", "externalAuth": "ExternalAuth"}


def _one_filter(cls, supported: dict, unsupported: tuple):
    """A filter: `type` names exactly one member, which must be present (the spec's CEL pairs)."""
    def check(v, path, problems):
        if not isinstance(v, dict):
            problems.append((path, f"must be a mapping, got {_type_name(v)}"))
            return None
        t = v.get("type")
        if t in unsupported:
            problems.append((f"{path}.type", f"{t} is not supported by trellis waypoints "
                                             f"(supported: {', '.join(supported)})"))
            return None
        if t not in supported:
            problems.append((f"{path}.type", f"must be one of {', '.join(supported)}, got {t!r}"))
            return None
        member, attr, sub = supported[t]
        before = len(problems)
        for k in v:
            if k == "type" or k == member:
                continue
            if k in _ALL_MEMBERS:
                problems.append((f"{path}.{k}", f"filter.{k} must be nil if the filter.type is not {_ALL_MEMBERS[k]}"))
            else:
                problems.append((f"{path}.{k}", f"unknown field (allowed: type, {member})"))
        if v.get(member) is None:
            problems.append((f"{path}.{member}", f"filter.{member} must be specified for {t} filter.type"))
            return None
        value = sub(v[member], f"{path}.{member}", problems)
        return None if len(problems) > before else cls(type=t, **{attr: value})
    return check


def filter_list(cls, supported: dict, unsupported: tuple):
    """Filters of a rule or a backend: at most 16, each type at most once, redirect xor rewrite."""
    item = _one_filter(cls, supported, unsupported)

    def check(v, path, problems):
        out = max_items(list_of(item), 16)(v, path, problems)
        if out is None or None in out:
            return None
        types = [f.type for f in out]
        for t in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite"):
            if types.count(t) > 1:
                problems.append((path, f"{t} filter cannot be repeated"))
        if "RequestRedirect" in types and "URLRewrite" in types:
            problems.append((path, "May specify either httpRouteFilterRequestRedirect or "
                                   "httpRouteFilterRequestRewrite, but not both"))
        return out
    return check
