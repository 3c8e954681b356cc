"""The Kubernetes API as Trellis needs it: LIST and WATCH of a collection, GET, POST, PUT,
merge-PATCH (status) and DELETE of one object, as plain JSON, over the httpx client that lightkube configures. Shared by
the control plane (config source, TokenReview, the CA Secret) and the node agent (its
node's pods): a package of its own, since components never import each other.

lightkube does the configuration and authentication: in-cluster (the projected
ServiceAccount token, re-read when it rotates, and the cluster CA) or a kubeconfig with a
token or a client certificate. The requests are ours, for three reasons: lightkube's
`watch()` cannot ask for bookmarks (allowWatchBookmarks), restarts the watch inside
its own loop where our reflector must see every end, and its `on_error` back-off sleeps
with asyncio, which fails under trio. Objects stay plain dicts: they go straight to our
own validator (meshcore.resources), and decoding into lightkube's models would drop
fields those models do not know."""
from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import httpx2 as httpx
from lightkube import KubeConfig
from lightkube.config.client_adapter import AsyncClient, ConnectionParams
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ConfigError

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
LIST_TIMEOUT = 60.0


class KubeApiError(Exception):
    """The API server answered with a failure (an HTTP status or a watch ERROR event)."""

    def __init__(self, code: int, reason: str, message: str, path: str):
        super().__init__(f"{path}: {code} {reason}: {message}" + _hint(code, path))
        self.code, self.reason = code, reason


class Gone(KubeApiError):
    """410: the resourceVersion asked for is older than the server's history: relist."""


class KubeConfigError(ValueError):
    pass


def _hint(code: int, path: str) -> str:
    if code in (401, 403):
        return (f"; may this component's ServiceAccount use {path}? (RBAC: the chart's ClusterRoles grant "
                "exactly what each component reads, creates or reviews)")
    if code == 404:
        return "; is the API (or its CRD) installed in this cluster?"
    return ""


def load_config(kubeconfig: str | None = None, context: str | None = None,
                service_account_dir: str = SERVICE_ACCOUNT_DIR) -> SingleConfig:
    """In a pod (KUBERNETES_SERVICE_HOST set and a mounted token) the in-cluster config,
    unless a kubeconfig is named; else $KUBECONFIG or ~/.kube/config."""
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and \
                Path(service_account_dir, "token").is_file():
            config = KubeConfig.from_service_account(service_account_dir).get()
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
            config = KubeConfig.from_file(path).get(context)
    except (ConfigError, OSError, KeyError, ValueError) as exc:
        raise KubeConfigError(f"cannot load the Kubernetes client configuration: {exc}") from None
    if config is None:
        raise KubeConfigError(f"kubeconfig has no context {context!r} and no current-context")
    if config.user is not None and config.user.exec is not None:
        # lightkube runs exec credential plugins with asyncio's subprocesses: not under trio
        raise KubeConfigError(f"kubeconfig user of context {config.context_name!r} authenticates with an exec "
                              "plugin, which is not supported here: use a token or a client certificate "
                              "(e.g. a ServiceAccount token: kubectl create token)")
    return config


@dataclass(frozen=True)
class WatchEvent:
    type: str      # ADDED | MODIFIED | DELETED | BOOKMARK
    object: dict


class KubeApi:
    def __init__(self, config: SingleConfig, *, http: httpx.AsyncClient | None = None):
        self.server = config.cluster.server
        self.http = http or AsyncClient(config, ConnectionParams(timeout=httpx.Timeout(LIST_TIMEOUT), trust_env=False))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def list(self, path: str, params: dict | None = None) -> tuple[list[dict], str]:
        """Every object of a collection and the resourceVersion the list was taken at."""
        resp = await self.http.get(path, params=params or {})
        if resp.status_code != 200:
            raise _error(resp.status_code, resp.content, path)
        body = _json(resp.content, path)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if not isinstance(body.get("items"), list) or not isinstance(rv, str):
            raise KubeApiError(200, "BadList", "a list without items or metadata.resourceVersion", path)
        return body["items"], rv

    async def get(self, path: str) -> dict | None:
        """One object, or None when the server says 404."""
        resp = await self.http.get(path)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise _error(resp.status_code, resp.content, path)
        return _json(resp.content, path)

    async def post(self, path: str, body: dict) -> dict:
        """Create (or, for a review API, ask); a refusal raises KubeApiError with its code
        (409 AlreadyExists when a create lost a race)."""
        resp = await self.http.post(path, json=body)
        if resp.status_code not in (200, 201):
            raise _error(resp.status_code, resp.content, path)
        return _json(resp.content, path)

    async def put(self, path: str, body: dict) -> dict:
        """Replace one object (body carries the resourceVersion read, for optimistic
        concurrency: 409 Conflict when someone wrote in between)."""
        resp = await self.http.put(path, json=body)
        if resp.status_code not in (200, 201):
            raise _error(resp.status_code, resp.content, path)
        return _json(resp.content, path)

    async def patch(self, path: str, body: dict) -> dict:
        """A JSON merge patch (RFC 7386) of one object or of a subresource such as `/status`;
        a metadata.resourceVersion in it makes it conditional (409 Conflict when stale)."""
        resp = await self.http.patch(path, content=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/merge-patch+json"})
        if resp.status_code != 200:
            raise _error(resp.status_code, resp.content, path)
        return _json(resp.content, path)

    async def delete(self, path: str) -> bool:
        """Delete one object; False if it was already gone (404)."""
        resp = await self.http.delete(path)
        if resp.status_code == 404:
            return False
        if resp.status_code not in (200, 202):
            raise _error(resp.status_code, resp.content, path)
        return True

    async def watch(self, path: str, resource_version: str, timeout_seconds: int,
                    params: dict | None = None) -> AsyncIterator[WatchEvent]:
        """The events after `resource_version` until the server ends the watch (after
        timeoutSeconds). ERROR events are raised: Gone for 410, KubeApiError otherwise."""
        params = {**(params or {}), "watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        # the server closes the watch after timeoutSeconds; a read silent for longer is a dead peer
        timeout = httpx.Timeout(LIST_TIMEOUT, read=timeout_seconds + 30.0)
        async with self.http.stream("GET", path, params=params, timeout=timeout) as resp:
            if resp.status_code != 200:
                raise _error(resp.status_code, await resp.aread(), path)
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                event = _json(line.encode(), path)
                kind, obj = event.get("type"), event.get("object")
                if not isinstance(obj, dict) or kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"):
                    raise KubeApiError(200, "BadWatchEvent", f"unexpected watch event {line[:200]!r}", path)
                if kind == "ERROR":
                    raise _status_error(obj, path)
                yield WatchEvent(kind, obj)


def describe(exc: BaseException) -> str:
    """A failed request in words: httpx wraps trio's error, which wraps the SSL error,
    and only the innermost one says anything."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = next((str(e) for e in chain if str(e)), type(exc).__name__)
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        text += ("; does the kubeconfig's certificate-authority (in a pod: the ServiceAccount's ca.crt) "
                 "sign the API server's certificate?")
    return text


def _json(data: bytes, path: str) -> dict:
    try:
        body = json.loads(data)
    except ValueError:
        raise KubeApiError(0, "BadJSON", f"not JSON: {data[:200]!r}", path) from None
    if not isinstance(body, dict):
        raise KubeApiError(0, "BadJSON", f"not a JSON object: {data[:200]!r}", path)
    return body


def _status_error(status: dict, path: str) -> KubeApiError:
    code = status.get("code") if isinstance(status.get("code"), int) else 0
    cls = Gone if code == 410 else KubeApiError
    return cls(code, str(status.get("reason") or "Unknown"), str(status.get("message") or ""), path)


def _error(code: int, body: bytes, path: str) -> KubeApiError:
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        status.setdefault("code", code)
        status["code"] = status["code"] or code
        return _status_error(status, path)
    cls = Gone if code == 410 else KubeApiError
    return cls(code, "HTTPError", body[:200].decode("utf-8", "replace"), path)
