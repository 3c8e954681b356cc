"""Where the API server is and how to authenticate to it: the current (or named) context
of a kubeconfig, or the in-cluster ServiceAccount. Bearer tokens and client certificates;
`exec` and auth-provider plugins are refused with the reason (we run no external
programs to get credentials)."""
from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeconfigError(Exception):
    pass


@dataclass(frozen=True)
class Cluster:
    server: str                      # https://host:port (or http:// for a local stand-in)
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None
    namespace: str = "default"


def _data_or_file(entry: dict, key: str, base: Path, what: str) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        p = Path(entry[key])
        p = p if p.is_absolute() else base / p
        try:
            return p.read_bytes()
        except OSError as exc:
            raise KubeconfigError(f"{what}: {key} {p}: {exc.strerror}") from exc
    return None


def _context(ca: bytes | None, cert: bytes | None, key: bytes | None, insecure: bool) -> ssl.SSLContext:
    # a cluster's CA is its only trust anchor, as with kubectl; the system roots only without one
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT) if ca and not insecure else ssl.create_default_context()
    if insecure:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    elif ca:
        ctx.load_verify_locations(cadata=ca.decode())
    if cert and key:
        # ssl loads client keys only from files: write them where only we can read them
        with tempfile.TemporaryDirectory() as d:
            cp, kp = Path(d, "c.pem"), Path(d, "k.pem")
            cp.write_bytes(cert)
            kp.touch(mode=0o600)
            kp.write_bytes(key)
            ctx.load_cert_chain(cp, kp)
    return ctx


def _named(items: list, name: str, what: str, path: Path) -> dict:
    for it in items or []:
        if isinstance(it, dict) and it.get("name") == name:
            return it.get(what.rstrip("s")) or {}
    raise KubeconfigError(f"{path}: no {what.rstrip('s')} named {name!r}")


def _default_path() -> Path:
    return Path(os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube" / "config")


def from_kubeconfig(path: Path | None = None, context: str | None = None) -> Cluster:
    path = Path(path) if path else _default_path()
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise KubeconfigError(f"{path}: {exc.strerror}; point --kubeconfig or KUBECONFIG at one") from exc
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{path}: not YAML: {exc}") from exc
    name = context or cfg.get("current-context")
    if not name:
        raise KubeconfigError(f"{path}: no current-context; pass --context")
    ctx = _named(cfg.get("contexts"), name, "contexts", path)
    cluster = _named(cfg.get("clusters"), ctx.get("cluster"), "clusters", path)
    user = _named(cfg.get("users"), ctx.get("user"), "users", path) if ctx.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise KubeconfigError(f"{path}: user {ctx.get('user')!r} uses an exec/auth-provider plugin, which "
                              "trellis does not run; use a kubeconfig with a token or a client certificate")
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"{path}: cluster {ctx.get('cluster')!r} has no server")
    base = path.parent
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    ssl_ctx = None
    if server.startswith("https://"):
        ssl_ctx = _context(_data_or_file(cluster, "certificate-authority", base, str(path)),
                           _data_or_file(user, "client-certificate", base, str(path)),
                           _data_or_file(user, "client-key", base, str(path)),
                           bool(cluster.get("insecure-skip-tls-verify")))
    return Cluster(server.rstrip("/"), token, ssl_ctx, ctx.get("namespace") or "default")


def in_cluster(sa_dir: Path = SA_DIR) -> Cluster:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not (sa_dir / "token").exists():
        raise KubeconfigError("not in a cluster (no KUBERNETES_SERVICE_HOST or ServiceAccount token)")
    host = f"[{host}]" if ":" in host else host
    ns = (sa_dir / "namespace").read_text().strip() if (sa_dir / "namespace").exists() else "default"
    return Cluster(f"https://{host}:{port}", (sa_dir / "token").read_text().strip(),
                   _context((sa_dir / "ca.crt").read_bytes(), None, None, False), ns)


def load(path: Path | None = None, context: str | None = None) -> Cluster:
    """An explicit kubeconfig wins; else KUBECONFIG or ~/.kube/config; else in-cluster."""
    if path is None and not _default_path().exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    return from_kubeconfig(path, context)
