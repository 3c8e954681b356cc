"""The CA in a cluster: kept in Secrets of the control plane's namespace, so that every
replica signs with the same CA and a restart keeps it.

As Istio does: a user-supplied intermediate in the Secret `cacerts` (ca-cert.pem,
ca-key.pem, cert-chain.pem, root-cert.pem) wins; else the self-signed root lives in the
Secret `trellis-ca` (root-cert.pem, root-key.pem). The first replica to start finds none,
generates a root and creates the Secret; replicas that start at the same moment lose the
create with 409 AlreadyExists and read the winner's, so they never sign with a root of
their own that nodes do not trust."""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging

from kubewatch.client import KubeApi, KubeApiError

from .ca import CA_FILES, DEFAULT_TTL, CertificateAuthority, new_root_files

log = logging.getLogger("trellis.controlplane.casecret")

USER_SECRET = "cacerts"
ROOT_SECRET = "trellis-ca"


class CaSecretError(RuntimeError):
    pass


def secret_files(secret: dict, where: str) -> dict[str, bytes]:
    data = secret.get("data") or {}
    if not isinstance(data, dict):
        raise CaSecretError(f"{where}: data is not a map of file name to base64")
    try:
        return {k: base64.b64decode(v, validate=True) for k, v in data.items() if k in CA_FILES}
    except (binascii.Error, TypeError) as exc:
        raise CaSecretError(f"{where}: a data value is not base64: {exc}") from None


def root_secret(namespace: str, files: dict[str, bytes]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": ROOT_SECRET, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "trellis", "app.kubernetes.io/component": "ca"}},
            "data": {k: base64.b64encode(v).decode() for k, v in files.items()}}


async def load_or_create(api: KubeApi, namespace: str, trust_domain: str,
                         ttl: dt.timedelta = DEFAULT_TTL) -> tuple[CertificateAuthority, str]:
    """The CA, and in words where it came from."""
    secrets = f"/api/v1/namespaces/{namespace}/secrets"
    user = await api.get(f"{secrets}/{USER_SECRET}")
    if user is not None:
        where = f"Secret {namespace}/{USER_SECRET}"
        return _ca(secret_files(user, where), trust_domain, ttl, where), f"{where} (user-supplied)"
    where = f"Secret {namespace}/{ROOT_SECRET}"
    secret = await api.get(f"{secrets}/{ROOT_SECRET}")
    how = "read"
    if secret is None:
        try:
            secret = await api.post(secrets, root_secret(namespace, new_root_files(trust_domain)))
            how = "created"
        except KubeApiError as exc:
            if exc.code != 409:
                raise
            # another replica created it between our read and our create: theirs is the CA
            secret = await api.get(f"{secrets}/{ROOT_SECRET}")
            how = "read after losing the create to another replica"
            if secret is None:
                raise CaSecretError(f"{where}: create refused as AlreadyExists, yet it cannot be read") from None
    log.info("event=ca_loaded secret=%s/%s how=%r", namespace, ROOT_SECRET, how)
    return _ca(secret_files(secret, where), trust_domain, ttl, where), f"{where} ({how})"


def _ca(files: dict[str, bytes], trust_domain: str, ttl: dt.timedelta, where: str) -> CertificateAuthority:
    try:
        return CertificateAuthority.from_pem(files, trust_domain, ttl, where)
    except (FileNotFoundError, ValueError) as exc:
        raise CaSecretError(str(exc)) from None
