"""An API-server stand-in that speaks the real list/watch protocol over HTTP/1.1 (h11 on
trio), for the Kubernetes config source's tests and the cluster-shaped lab
(`trellis lab up --kubernetes`, which runs it as a process: trellis/lab/kubeserve.py). No kube-apiserver can be installed on
these machines; this serves what a client sees of one:

- LIST `GET /api/v1/pods` -> `{"kind":"PodList","metadata":{"resourceVersion":"N"},"items":[...]}`
  (every item with metadata.resourceVersion, uid, creationTimestamp);
- WATCH `?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S`: a
  chunked stream of JSON lines `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}`
  replaying every event after N, then new ones, closing after S seconds;
- 410 Gone for a resourceVersion older than the compacted history: as an ERROR event
  carrying a Status (code 410, reason Expired) or as an HTTP 410 with a Status body;
- faults on demand: HTTP 500s, watches dropped mid-stream;
- TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`) for the tokens in
  `tokens`, and TokenRequest (`POST .../serviceaccounts/SA/token`, as the kubelet asks
  for a pod's projected token), answering as kube-apiserver does (apiserver_auth.py),
  GET of one object of a listed kind, and GET/POST of Secrets (409 AlreadyExists on a
  second create);
- the status subresource of the Gateway API kinds (apiserver_status.py: PUT and merge-PATCH
  of `.../NAME/status`, status ignored by other writes, metadata.generation);
- writes of the listed kinds, as kubectl makes them: POST to the namespaced collection
  (`/apis/G/V/namespaces/NS/PLURAL`, 201, 409 if it exists), PUT and DELETE of one object
  (`.../PLURAL/NAME`, 200, 404 if absent); each becomes a watch event;
- the namespaced pod list (`/api/v1/namespaces/NS/pods`, label and field selectors) and the
  pods/proxy subresource, `GET /api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`, which
  forwards to the pod's IP (through `pod_network`, the stand-in's pod network) and answers
  what the pod answered, or 503 when it cannot be reached; 403 Forbidden, worded as
  kube-apiserver's RBAC answers, for the resources in `forbidden` ("pods", "pods/proxy").
One global resourceVersion counter orders every change, as etcd's revision does."""
from __future__ import annotations

import copy
import json
import ssl
import urllib.parse
import uuid
from dataclasses import dataclass, field

import h11
import trio

from .apiserver_auth import AuthApis, Token  # noqa: F401 - Token is part of this module's interface
from .apiserver_pods import COLLECTIONS, PATH_OF, PodsSubresources, _selected, _status
from .apiserver_status import StatusSubresource, main_write


@dataclass
class Request:
    path: str
    params: dict


@dataclass
class ApiServerStandIn(PodsSubresources, AuthApis, StatusSubresource):
    gone_as: str = "event"              # how a too-old resourceVersion is refused: "event" or "http"
    bookmark_every: float | None = None  # seconds between BOOKMARKs on each watch, if asked for
    token: str | None = None            # the bearer token every request must carry, if set
    tls: ssl.SSLContext | None = None   # serve HTTPS (and accept client certificates) with this
    rv: int = 100
    objects: dict = field(default_factory=dict)       # path -> {(ns, name): obj}
    events: list = field(default_factory=list)        # (rv, path, type, obj)
    compacted: int = 0                                # events at or below this rv are gone
    requests: list = field(default_factory=list)
    fail_next: list = field(default_factory=list)     # HTTP statuses to answer the next requests with
    tokens: dict = field(default_factory=dict)        # token -> Token
    secrets: dict = field(default_factory=dict)       # (ns, name) -> Secret object
    secret_reads: int = 0
    forbidden: set = field(default_factory=set)       # "pods", "pods/proxy": RBAC refuses these
    pod_network: dict = field(default_factory=dict)   # (pod IP, port) -> where on this host it answers
    race_create: str | None = None   # a Secret name: its first two missed reads answer together (a create race)
    _missing_waiting: int = 0
    _missing_release: trio.Event = field(default_factory=trio.Event)
    drop_watches: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event)
    _requested: trio.Event = field(default_factory=trio.Event)

    async def until(self, predicate) -> None:
        """Wait, without polling, until predicate() holds; it is checked after each request."""
        while not predicate():
            await self._requested.wait()

    # -- the cluster's side: what kubectl or a controller would change ----------------
    def put(self, obj: dict) -> dict:
        path = PATH_OF[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        coll = self.objects.setdefault(path, {})
        kind = "MODIFIED" if key in coll else "ADDED"
        self.rv += 1
        stored = copy.deepcopy(obj)
        prev = coll.get(key)
        # a uid given by the caller is kept: the lab names pod cgroups after it before the pod is served
        uid = prev["metadata"]["uid"] if prev else meta.get("uid") or str(uuid.uuid4())
        stored["metadata"].update(resourceVersion=str(self.rv), uid=uid,
                                  creationTimestamp="2026-12-01T00:00:00Z")
        main_write(stored, prev)   # status subresource kinds: status kept, generation counted
        coll[key] = stored
        self._record(path, kind, stored)
        return stored

    def delete(self, kind: str, namespace: str, name: str) -> None:
        path = PATH_OF[kind]
        obj = self.objects[path].pop((namespace, name))
        self.rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(path, "DELETED", gone)

    def compact(self) -> None:
        """Forget every event so far: a watch from an older resourceVersion gets 410 Gone."""
        self.compacted = self.rv
        self.events.clear()

    def _record(self, path, kind, obj):
        self.events.append((self.rv, path, kind, copy.deepcopy(obj)))
        old, self._changed = self._changed, trio.Event()
        old.set()

    def drop_all_watches(self) -> None:
        old, self.drop_watches = self.drop_watches, trio.Event()
        old.set()

    def watches(self, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.params.get("watch") in ("true", "1") and (path is None or r.path == path)]

    def lists(self, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.params.get("watch") not in ("true", "1") and (path is None or r.path == path)]

    # -- HTTP ---------------------------------------------------------------------------
    async def serve(self, host: str = "127.0.0.1", port: int = 0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        client_cert = False
        try:
            if self.tls is not None:
                stream = trio.SSLStream(stream, self.tls, server_side=True)
                await stream.do_handshake()
                # a client certificate that chains to the cluster CA authenticates, as kube-apiserver's x509 auth
                client_cert = stream.getpeercert() is not None
            while True:
                event = await self._next(conn, stream)
                if not isinstance(event, h11.Request):
                    return
                body = b""
                while not isinstance(part := await self._next(conn, stream), h11.EndOfMessage):
                    body += part.data if isinstance(part, h11.Data) else b""
                url = urllib.parse.urlsplit(event.target.decode())
                params = dict(urllib.parse.parse_qsl(url.query))
                self.requests.append(Request(url.path, params))
                self._requested.set()
                self._requested = trio.Event()
                headers = dict(event.headers)
                auth = "x509" if client_cert else headers.get(b"authorization", b"").decode()
                if event.method != b"GET" or url.path.startswith(("/api/v1/namespaces/", "/apis/authentication")) \
                        or _named(url.path.strip("/").split("/")):
                    await self._object(conn, stream, event.method.decode(), url.path, body, auth, params,
                                       headers.get(b"content-type", b"").decode())
                else:
                    await self._route(conn, stream, url.path, params, auth)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _next(self, conn, stream):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            return event

    async def _send_json(self, conn, stream, status, body):
        data = json.dumps(body).encode()
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
            ("Content-Type", "application/json"), ("Content-Length", str(len(data)))])))
        await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))

    async def _refused(self, conn, stream, authorization) -> bool:
        """Answer 401 for a wrong credential, or the next fault asked for; True if it did."""
        if self.token and authorization not in (f"Bearer {self.token}", "x509"):
            await self._send_json(conn, stream, 401, _status(401, "Unauthorized", "Unauthorized"))
            return True
        if self.fail_next:
            code = self.fail_next.pop(0)
            await self._send_json(conn, stream, code, _status(code, "InternalError", "etcdserver: leader changed"))
            return True
        return False

    async def _route(self, conn, stream, path, params, authorization=""):
        if await self._refused(conn, stream, authorization):
            return
        if path not in COLLECTIONS:
            await self._send_json(conn, stream, 404, _status(404, "NotFound", f"the server could not find {path}"))
            return
        if params.get("watch") in ("true", "1"):
            await self._watch(conn, stream, path, params)
            return
        api, kind = COLLECTIONS[path]
        # as a real server: list items carry no apiVersion/kind (the list says them once)
        items = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")}
                 for _, o in sorted(self.objects.get(path, {}).items()) if _selected(o, params)]
        await self._send_json(conn, stream, 200, {"kind": f"{kind}List", "apiVersion": api,
                                                  "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    async def _object(self, conn, stream, method, path, body, authorization, params=None, content_type=""):
        """One object: TokenReview, a pod by name, a Secret (get and create), a status subresource."""
        if await self._refused(conn, stream, authorization):
            return
        parts = path.strip("/").split("/")
        req = json.loads(body) if body else {}
        if method in ("PUT", "PATCH") and parts[-1] == "status":
            await self._status(conn, stream, method, parts, req, content_type)
        elif method == "POST" and path == "/apis/authentication.k8s.io/v1/tokenreviews":
            await self._send_json(conn, stream, *self.token_review(req))
        elif method == "POST" and len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] \
                and parts[4] == "serviceaccounts" and parts[6] == "token":
            await self._send_json(conn, stream, *self.token_request(parts[3], parts[5], req))
        elif method == "GET" and parts[:3] == ["api", "v1", "namespaces"] and parts[4:5] == ["pods"] and len(parts) != 6:
            await self._pods(conn, stream, parts, params)
        elif method == "GET" and parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 6 and parts[4] == "pods":
            pod = self.objects.get(PATH_OF["Pod"], {}).get((parts[3], parts[5]))
            await self._send_json(conn, stream, *((200, pod) if pod else
                                                  (404, _status(404, "NotFound", f'pods "{parts[5]}" not found'))))
        elif method == "GET" and len(parts) == 6 and parts[4] == "secrets":
            self.secret_reads += 1
            secret = self.secrets.get((parts[3], parts[5]))
            if secret is None and parts[5] == self.race_create and self._missing_waiting < 2:
                self._missing_waiting += 1
                if self._missing_waiting == 2:
                    self._missing_release.set()
                await self._missing_release.wait()
            await self._send_json(conn, stream, *((200, secret) if secret else
                                                  (404, _status(404, "NotFound", f'secrets "{parts[5]}" not found'))))
        elif method == "GET" and _named(parts):
            obj = self.objects.get(_collection(parts), {}).get((parts[-3], parts[-1]))
            await self._send_json(conn, stream, *((200, obj) if obj else
                                                  (404, _status(404, "NotFound", f'{parts[-2]} "{parts[-1]}" not found'))))
        elif method == "POST" and path in COLLECTIONS and COLLECTIONS[path][1] == "GatewayClass":
            await self._create_cluster_scoped(conn, stream, path, req)
        elif method in ("POST", "PUT", "DELETE") and _collection(parts) in COLLECTIONS:
            await self._write(conn, stream, method, parts, req)
        elif method == "POST" and len(parts) == 5 and parts[4] == "secrets":
            key = (parts[3], (req.get("metadata") or {}).get("name"))
            if key in self.secrets:
                await self._send_json(conn, stream, 409, _status(409, "AlreadyExists",
                                                                 f'secrets "{key[1]}" already exists'))
                return
            self.rv += 1
            req.setdefault("metadata", {}).update(namespace=key[0], resourceVersion=str(self.rv), uid=str(uuid.uuid4()))
            self.secrets[key] = req
            await self._send_json(conn, stream, 201, req)
        else:
            await self._send_json(conn, stream, 404, _status(404, "NotFound", f"the server could not find {path}"))

    async def _write(self, conn, stream, method, parts, req):
        """kubectl create/replace/delete of a listed kind in a namespace."""
        i = parts.index("namespaces")
        ns, name = parts[i + 1], parts[i + 3] if len(parts) > i + 3 else None
        path = _collection(parts)
        have = self.objects.get(path, {}).get((ns, name or (req.get("metadata") or {}).get("name")))
        if method == "POST" and (name or have):
            await self._send_json(conn, stream, 409 if have else 405, _status(409 if have else 405, "AlreadyExists"
                                  if have else "MethodNotAllowed", f"cannot create {'/'.join(parts)}"))
        elif method != "POST" and not have:
            await self._send_json(conn, stream, 404, _status(404, "NotFound", f'{parts[i + 2]} "{name}" not found'))
        elif method == "DELETE":
            self.delete(COLLECTIONS[path][1], ns, name)
            await self._send_json(conn, stream, 200, _status(200, "", "deleted") | {"status": "Success"})
        elif COLLECTIONS[path][1] != req.get("kind") or (req.get("metadata") or {}).get("namespace", ns) != ns:
            await self._send_json(conn, stream, 400, _status(400, "BadRequest", f"the body's kind/namespace "
                                  f"({req.get('kind')}/{(req.get('metadata') or {}).get('namespace')}) do not match {path} in {ns}"))
        else:
            req.setdefault("metadata", {})["namespace"] = ns
            if method == "POST" and req["kind"] == "Service" and "clusterIP" not in req.setdefault("spec", {}) \
                    and req["spec"].get("type") != "ExternalName":
                # as kube-apiserver: a created Service gets a ClusterIP (from 10.96.128.0/17, clear of the lab's),
                # except an ExternalName one (a DNS alias); clusterIP: None (headless) is kept
                ip = f"10.96.{128 + self.rv // 250 % 128}.{1 + self.rv % 250}"
                req["spec"].update(clusterIP=ip, clusterIPs=[ip])
            await self._send_json(conn, stream, 201 if method == "POST" else 200, self.put(req))

    async def _watch(self, conn, stream, path, params):
        since = int(params.get("resourceVersion") or self.rv)
        gone = _status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
        if since < self.compacted:
            if self.gone_as == "http":
                await self._send_json(conn, stream, 410, gone)
                return
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
            ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])))
        if since < self.compacted:
            await stream.send_all(conn.send(h11.Data(data=_line("ERROR", gone))) + conn.send(h11.EndOfMessage()))
            return
        bookmarks = params.get("allowWatchBookmarks") == "true" and self.bookmark_every
        dropped = self.drop_watches
        with trio.move_on_after(float(params.get("timeoutSeconds", 1800))):
            sent = since
            while True:
                # take the change event before the batch: a write made while a line is being
                # sent (send_all yields) lands after the batch and sets this event
                changed = self._changed
                batch = [e for e in self.events if e[0] > sent]
                for rv, p, kind, obj in batch:
                    if p == path and _selected(obj, params):
                        await stream.send_all(conn.send(h11.Data(data=_line(kind, obj))))
                sent = batch[-1][0] if batch else sent
                with trio.move_on_after(bookmarks or float("inf")):
                    async with trio.open_nursery() as n:
                        n.start_soon(_set_when, changed, n.cancel_scope)
                        n.start_soon(_set_when, dropped, n.cancel_scope)
                if dropped.is_set():  # close with no terminating chunk: a broken watch
                    await trio.aclose_forcefully(stream)
                    raise trio.ClosedResourceError("watch dropped on purpose")
                if not changed.is_set() and bookmarks:
                    api, kind = COLLECTIONS[path]
                    mark = {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": str(self.rv)}}
                    await stream.send_all(conn.send(h11.Data(data=_line("BOOKMARK", mark))))
        await stream.send_all(conn.send(h11.EndOfMessage()))


def _collection(parts: list[str]) -> str:
    """`api/v1/namespaces/NS/pods[/NAME]` -> `/api/v1/pods`, the cluster-wide collection path."""
    if "namespaces" not in parts or len(parts) < parts.index("namespaces") + 3:
        return ""
    i = parts.index("namespaces")
    return "/" + "/".join(parts[:i] + [parts[i + 2]])


def _named(parts: list[str]) -> bool:
    """`.../namespaces/NS/PLURAL/NAME` of a listed kind: one namespaced object."""
    return "namespaces" in parts and len(parts) == parts.index("namespaces") + 4 and _collection(parts) in COLLECTIONS


async def _set_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _line(kind: str, obj: dict) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"
