"""A small HTTPS stand-in for the API server's write path, for `trellis install/uninstall`:
it checks each request the way kube-apiserver does (bearer token, server-side apply's
content type and fieldManager, a namespace that exists) and keeps the objects it was given."""
from __future__ import annotations

import datetime
import json
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN = "standin-token"


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cp, kp = directory / "apiserver.crt", directory / "apiserver.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


@dataclass
class Seen:
    method: str
    path: str
    query: dict
    content_type: str
    body: object


@dataclass
class Store:
    objects: dict = field(default_factory=dict)   # path -> object
    requests: list = field(default_factory=list)
    refuse: dict = field(default_factory=dict)    # path -> (status, reason, message)


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}


def handler(store: Store):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _reply(self, code: int, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _read(self):
            u = urllib.parse.urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ctype = self.headers.get("Content-Type", "")
            body = yaml.safe_load(raw) if "yaml" in ctype else (json.loads(raw) if raw else None)
            seen = Seen(self.command, u.path, dict(urllib.parse.parse_qsl(u.query)), ctype, body)
            store.requests.append(seen)
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._reply(401, _status(401, "Unauthorized", "Unauthorized"))
                return None
            if u.path in store.refuse:
                self._reply(store.refuse[u.path][0], _status(*store.refuse[u.path]))
                return None
            return seen

        def _namespace_missing(self, path: str) -> str | None:
            parts = path.split("/")
            if "namespaces" in parts and parts.index("namespaces") + 2 < len(parts):
                ns = parts[parts.index("namespaces") + 1]
                if f"/api/v1/namespaces/{ns}" not in store.objects:
                    return ns
            return None

        def do_PATCH(self):
            seen = self._read()
            if seen is None:
                return
            if seen.content_type != "application/apply-patch+yaml":
                return self._reply(415, _status(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"))
            if not seen.query.get("fieldManager"):
                return self._reply(422, _status(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"))
            ns = self._namespace_missing(seen.path)
            if ns:
                return self._reply(404, _status(404, "NotFound", f'namespaces "{ns}" not found'))
            created = seen.path not in store.objects
            store.objects[seen.path] = seen.body
            self._reply(201 if created else 200, seen.body)

        def do_DELETE(self):
            seen = self._read()
            if seen is None:
                return
            if seen.path not in store.objects:
                name = seen.path.rsplit("/", 1)[-1]
                return self._reply(404, _status(404, "NotFound", f'"{name}" not found'))
            del store.objects[seen.path]
            self._reply(200, _status(200, "", "") | {"status": "Success"})

    return H


class StandIn:
    def __init__(self, directory: Path):
        self.store = Store()
        self.cert, key = self_signed(directory)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self.store))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path, token: str = TOKEN) -> Path:
        import base64
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "standin",
               "clusters": [{"name": "standin", "cluster": {
                   "server": self.url, "certificate-authority-data": base64.b64encode(self.cert.read_bytes()).decode()}}],
               "users": [{"name": "admin", "user": {"token": token}}],
               "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "admin"}}]}
        path.write_text(yaml.safe_dump(cfg))
        return path
