"""What Gateway API filters do to a request or a response (pure): header modifiers,
RequestRedirect's Location and URLRewrite, as apis/v1/httproute_types.go specifies."""
from __future__ import annotations

from meshcore.resources.filters import HeaderModifier, PathModifier, RequestRedirect, URLRewrite

from .http.events import Headers, Request

WELL_KNOWN_PORTS = {"http": 80, "https": 443}


def modify_headers(headers: Headers, m: HeaderModifier) -> Headers:
    """set overwrites every value of a name, add appends one more, remove drops all values;
    names are case-insensitive and the spec allows one action per name."""
    touched = {n.lower() for n, _ in m.set} | {n.lower() for n in m.remove}
    out = [(k, v) for k, v in headers if k not in touched]
    out += [(n.lower(), v) for n, v in m.set]
    out += [(n.lower(), v) for n, v in m.add]
    return tuple(out)


def replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """ReplacePrefixMatch, element-wise with trailing slashes ignored (the spec's table:
    /foo/bar,/foo,/xyz -> /xyz/bar; /foo/,/foo,/xyz -> /xyz/; /foo,/foo,"" -> /)."""
    p = prefix.rstrip("/")
    rest = path[len(p):]
    out = replacement.rstrip("/") + rest
    if not out.startswith("/"):
        out = "/" + out
    return out


def modified_path(path: str, modifier: PathModifier | None, matched_prefix: str | None) -> str:
    if modifier is None:
        return path
    if modifier.type == "ReplaceFullPath":
        return modifier.replace_full_path or "/"
    return replace_prefix(path, matched_prefix or "/", modifier.replace_prefix_match or "")


def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


def redirect_location(req: Request, r: RequestRedirect, matched_prefix: str | None, listener_port: int) -> str:
    """The Location of a RequestRedirect. Port: the filter's, else the scheme's well-known port
    when the scheme is set, else the listener's (for a mesh Service, the port dialled); 80 for
    http and 443 for https are left out, as the spec asks. The query string is kept."""
    scheme = r.scheme or req.scheme
    host = r.hostname or req.host
    if r.port is not None:
        port = r.port
    elif r.scheme is not None:
        port = WELL_KNOWN_PORTS[r.scheme]
    else:
        port = listener_port
    netloc = host if WELL_KNOWN_PORTS.get(scheme) == port else f"{host}:{port}"
    path = modified_path(req.path, r.path, matched_prefix)
    return f"{scheme}://{netloc}{_with_query(path, req.query)}"


def rewrite(req: Request, r: URLRewrite, matched_prefix: str | None) -> Request:
    changes: dict = {}
    if r.hostname is not None:
        changes["authority"] = r.hostname
        changes["headers"] = tuple((k, r.hostname if k == "host" else v) for k, v in req.headers)
    if r.path is not None:
        changes["target"] = _with_query(modified_path(req.path, r.path, matched_prefix), req.query)
    return req.with_(**changes) if changes else req
