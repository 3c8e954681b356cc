"""Path normalisation before authorization and routing, with Istio's semantics
(meshConfig.pathNormalization MERGE_SLASHES plus Envoy's path_with_escaped_slashes_action
REJECT_REQUEST): the classic authorization-bypass class of mesh CVEs (`//admin`,
`/./admin`, `/a/../admin`, `/%61dmin`, `/%2e%2e/admin`, `/\\admin`) all become `/admin`.

Steps, in Envoy's order: escaped slashes (`%2F`, `%5C`, any case) are refused with 400 unless
allowed (then left as they are, never decoded); percent-encoded unreserved characters
(ALPHA, DIGIT, `-._~`, RFC 3986 2.3) are decoded and other escapes get uppercase hex
(RFC 3986 6.2.2.1); `\\` becomes `/`; runs of `/` merge; dot segments are removed
(RFC 3986 5.2.4, never above the root). Malformed escapes (`%zz`) are kept verbatim, as
Envoy does: they decode to nothing a rule could match differently. The query is untouched.
"""
from __future__ import annotations

import re

_ESCAPED_SLASH = re.compile(r"%(2f|5c)", re.IGNORECASE)
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES = re.compile(r"/{2,}")
# what any step below could change: an escape, a backslash, a run of slashes, a dot segment
_NEEDS_WORK = re.compile(r"[%\\]|//|/\.").search


class PathRejected(ValueError):
    """The request must be answered with `status` (400) and never reach authorization."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _decode_unreserved(m: re.Match) -> str:
    ch = chr(int(m.group(1), 16))
    return ch if ch in _UNRESERVED else "%" + m.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path, by segments."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def normalize_path(path: str, allow_escaped_slashes: bool = False) -> str:
    """The path (no query) as authorization and routing see it; PathRejected (400) otherwise."""
    if not path.startswith("/"):
        raise PathRejected(400, f"request path {path[:64]!r} does not start with '/'")
    if _ESCAPED_SLASH.search(path) and not allow_escaped_slashes:
        raise PathRejected(400, "request path contains an escaped slash (%2F or %5C); refused so that "
                                "it cannot slip past path-based authorization")
    path = _ESCAPE.sub(_decode_unreserved, path)
    path = _SLASHES.sub("/", path.replace("\\", "/"))
    return remove_dot_segments(path)


def normalize_target(target: str, allow_escaped_slashes: bool = False) -> str:
    """A request target (path and query): the path normalised, the query kept as sent."""
    path, sep, query = target.partition("?")
    if path[:1] == "/" and _NEEDS_WORK(path) is None:
        return target   # nearly every request: nothing to normalise (one search instead of four passes)
    return normalize_path(path, allow_escaped_slashes) + sep + query
