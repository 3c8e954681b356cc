"""What the cluster-shaped lab's API server knows, made from the lab: a kubeadm-style PKI,
the lab's pods as v1 Pods (spec.nodeName, status.podIP, uid, serviceAccountName, labels),
the lab config's Namespaces, Services and policies, the ServiceAccount tokens of each
node's ztunnel and node agent, and a kubeconfig for the stand-in. Files only: the stand-in
process (kubeserve.py) and the lab (kube.py) read them."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import ssl
import uuid
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from controlplane.ca import generate_key, key_pem

NODE_ACCOUNT = ("trellis-system", "ztunnel")  # the control plane's --node-account default
KUBELET_QOS = "besteffort"                      # lab pods request nothing: the kubelet's BestEffort class


def pod_uid(prefix: str, namespace: str, name: str) -> str:
    """Stable per lab: the cgroup is made (named after it) before the stand-in serves the pod."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"trellis-lab://{prefix}/{namespace}/{name}"))


def kubelet_cgroup(node: str, uid: str, container: str) -> str:
    """The pod's container cgroup relative to the lab cgroup root, as the kubelet's systemd
    driver lays it out under the node's kubelet cgroup root `<node>/kubelet`."""
    u = uid.replace("-", "_")
    return (f"{node}/kubelet/kubepods.slice/kubepods-{KUBELET_QOS}.slice/"
            f"kubepods-{KUBELET_QOS}-pod{u}.slice/cri-containerd-{container}.scope")


def cluster_pki(d: Path, ips: list[str]) -> ssl.SSLContext:
    """A cluster CA, the API server's certificate for `ips` and a client certificate, as
    kubeadm lays them out (PEM files in d); returns the server's TLS context."""

    def cert(subject, key, issuer, issuer_key, *, ca=False, san=None):
        now = dt.datetime.now(dt.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, server_key, client_key = generate_key(), generate_key(), generate_key()
    files = {"ca.crt": cert("kubernetes", ca_key, "kubernetes", ca_key, ca=True),
             "apiserver.crt": cert("kube-apiserver", server_key, "kubernetes", ca_key,
                                   san=[x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]),
             "apiserver.key": key_pem(server_key),
             "trellis.crt": cert("system:serviceaccount:trellis-system:controlplane", client_key, "kubernetes", ca_key),
             "trellis.key": key_pem(client_key)}
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return server_context(d)


def server_context(d: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(d / "apiserver.crt", d / "apiserver.key")
    ctx.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is one way in, a bearer token the other
    return ctx


def kubeconfig(path: Path, server: str, *, token: str | None = None, ca: Path | None = None,
               user: dict | None = None) -> str:
    cluster = {"server": server, **({"certificate-authority": str(ca)} if ca else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": cluster}],
        "users": [{"name": "me", "user": user or {"token": token}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "me"}}]}))
    return str(path)


def pod_object(prefix: str, pod) -> dict:
    """A lab PodPlan as the v1 Pod the kubelet would report running."""
    s = pod.spec
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": s.name, "namespace": s.namespace, "labels": dict(s.labels),
                         "uid": pod_uid(prefix, s.namespace, s.name)},
            "spec": {"nodeName": s.node, "serviceAccountName": s.service_account,
                     "containers": [{"name": "app", "image": "trellis-lab", "command": list(s.command)}]},
            "status": {"phase": "Running", "podIP": pod.address, "podIPs": [{"ip": pod.address}]}}


def objects(plan, config_dir: Path) -> list[dict]:
    """Everything the stand-in serves at start: the lab config's objects, a Namespace for
    every pod namespace the config does not define, the pods' ServiceAccounts, the Pods."""
    docs = []
    for f in sorted(config_dir.glob("*.y*ml")) if config_dir.is_dir() else []:
        docs += [d for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)]
    have = {(d["kind"], (d.get("metadata") or {}).get("namespace", ""), d["metadata"]["name"]) for d in docs}
    for ns in sorted({p.spec.namespace for p in plan.pods} | {NODE_ACCOUNT[0]}):
        if ("Namespace", "", ns) not in have:
            docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for ns, sa in sorted({(p.spec.namespace, p.spec.service_account) for p in plan.pods}):
        docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}})
    return docs + [pod_object(plan.prefix, p) for p in plan.pods]


def node_tokens(plan) -> dict[str, dict]:
    """token -> what TokenReview says of it: each node's ztunnel/node-agent ServiceAccount
    token, bound to a pod on that node (the node-name claim the control plane authorizes by)."""
    ns, sa = NODE_ACCOUNT
    return {secrets.token_urlsafe(24): {"namespace": ns, "service_account": sa, "pod": f"trellis-node-{n.name}",
                                        "node": n.name} for n in plan.nodes}


def write(d: Path, plan, config_dir: Path, ip: str) -> None:
    """The stand-in's inputs under d: pki/, objects.yaml, tokens.json (node tokens + the
    admin token the control plane, node agents and `lab` clients use)."""
    cluster_pki(d / "pki", [ip, "127.0.0.1"])
    (d / "objects.yaml").write_text(yaml.safe_dump_all(objects(plan, config_dir), sort_keys=False))
    (d / "tokens.json").write_text(json.dumps({"admin": secrets.token_urlsafe(24), "nodes": node_tokens(plan)}, indent=1))
    for token, t in node_tokens_of(d).items():
        (d / f"token-{t['node']}").write_text(token)


def node_tokens_of(d: Path) -> dict[str, dict]:
    return json.loads((d / "tokens.json").read_text())["nodes"]


def admin_token(d: Path) -> str:
    return json.loads((d / "tokens.json").read_text())["admin"]
