"""The API-server stand-in's status subresource, the way kube-apiserver serves it for kinds
that declare one (every Gateway API CRD does: `subresources: {status: {}}`):

- a write of the object itself (create, replace; kubectl apply) ignores `status`: a create
  starts without one, a replace keeps the stored one;
- `metadata.generation` is 1 on create and goes up by one when anything but metadata and
  status changes;
- `PUT .../NAME/status` (the whole object; only its status is taken) and `PATCH
  .../NAME/status` with `Content-Type: application/merge-patch+json` (RFC 7386; only the
  patched status is kept) change the status alone: new resourceVersion, same generation, a
  MODIFIED watch event; a metadata.resourceVersion in the body that is not the stored one
  is 409 Conflict; another patch type is 415.
Other kinds (Pods, whose status the lab's kubelet writes with the object) are stored as given."""
from __future__ import annotations

import copy

from .apiserver_pods import COLLECTIONS, _status

# kinds with a status subresource, as their CRDs declare it
STATUS_KINDS = {"GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute"}
MERGE_PATCH = "application/merge-patch+json"
_PLURAL = {kind: path.rsplit("/", 1)[1] for path, (_, kind) in COLLECTIONS.items()}
_GROUP = {kind: api.split("/")[0] if "/" in api else "" for _, (api, kind) in COLLECTIONS.items()}


def merge_patch(target, patch):
    """RFC 7386: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def main_write(stored: dict, prev: dict | None) -> None:
    """What a write of the object itself keeps of status and does to generation."""
    if stored.get("kind") not in STATUS_KINDS:
        return
    stored.pop("status", None)
    if prev is not None and "status" in prev:
        stored["status"] = copy.deepcopy(prev["status"])
    gen = 1
    if prev is not None:
        gen = int(prev["metadata"].get("generation") or 1)
        if _body(prev) != _body(stored):
            gen += 1
    stored["metadata"]["generation"] = gen


def _body(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class StatusSubresource:
    """Mixed into ApiServerStandIn: uses its objects, rv, _record and _send_json."""

    def write_status(self, kind: str, namespace: str, name: str, status: dict) -> dict:
        path = next(p for p, (_, k) in COLLECTIONS.items() if k == kind)
        stored = self.objects[path][(namespace, name)]
        self.rv += 1
        stored["status"] = copy.deepcopy(status)
        stored["metadata"]["resourceVersion"] = str(self.rv)
        self._record(path, "MODIFIED", stored)
        return stored

    async def _create_cluster_scoped(self, conn, stream, path: str, req: dict) -> None:
        """POST of a cluster-scoped kind (a GatewayClass): 201, or 409 if it exists."""
        name = (req.get("metadata") or {}).get("name")
        if ("", name) in self.objects.get(path, {}):
            await self._send_json(conn, stream, 409, _status(409, "AlreadyExists", f'"{name}" already exists'))
            return
        await self._send_json(conn, stream, 201, self.put(req))

    async def _status(self, conn, stream, method: str, parts: list[str], req: dict, content_type: str) -> None:
        """PUT or PATCH of `.../PLURAL/NAME/status` (namespaced, or a cluster-scoped kind)."""
        plural, name = parts[-3], parts[-2]
        ns = parts[parts.index("namespaces") + 1] if "namespaces" in parts else ""
        kind = next((k for k, p in _PLURAL.items() if p == plural), None)
        have = self.objects.get(next((p for p, (_, k) in COLLECTIONS.items() if k == kind), ""), {}).get((ns, name))
        what = f"{plural}.{_GROUP.get(kind) or 'core'}" if kind else plural
        if kind not in STATUS_KINDS:
            await self._send_json(conn, stream, 404, _status(404, "NotFound", f"the server could not find {plural}/status"))
            return
        if have is None:
            await self._send_json(conn, stream, 404, _status(404, "NotFound", f'{what} "{name}" not found'))
            return
        if method == "PATCH" and content_type.split(";")[0].strip() != MERGE_PATCH:
            await self._send_json(conn, stream, 415, _status(415, "UnsupportedMediaType",
                                                             f"the body of the request was in an unknown format - "
                                                             f"accepted media types include: {MERGE_PATCH}"))
            return
        rv = (req.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != have["metadata"]["resourceVersion"]:
            await self._send_json(conn, stream, 409, _status(409, "Conflict", (
                f'Operation cannot be fulfilled on {what} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again")))
            return
        status = merge_patch(have, req).get("status") if method == "PATCH" else req.get("status")
        await self._send_json(conn, stream, 200, self.write_status(kind, ns, name, status or {}))
