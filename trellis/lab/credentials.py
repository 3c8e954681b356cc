"""Bootstrap credentials the lab hands out from its CA (the control plane's `--ca-dir`).

Node credentials come from `python -m controlplane --issue-node-credential` (trellis/lab/up.py);
a waypoint pod's bootstrap credential is a *workload* identity, which that command does not
issue, so the lab signs it with the CA's own code (controlplane.ca, the only home of the
signing rules): the waypoint renews it through the control plane afterwards
(docs/internals.md "waypoint process: startup contract")."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

BOOTSTRAP_TTL = dt.timedelta(hours=24)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def issue_workload(ca_dir: Path, trust_domain: str, namespace: str, service_account: str, out: Path,
                   ttl: dt.timedelta = BOOTSTRAP_TTL) -> str:
    """Write cert.pem (leaf first, chain after), key.pem and roots.pem for
    spiffe://TD/ns/NS/sa/SA into `out`; returns the identity."""
    from controlplane.ca import CertificateAuthority, build_csr, generate_key, key_pem
    from meshcore.identity import workload_identity
    if not Path(ca_dir).is_dir():   # load_or_create would make a new CA nobody trusts
        raise FileNotFoundError(f"no CA in {ca_dir}: the lab's control plane has not created it")
    ca = CertificateAuthority.load_or_create(ca_dir, trust_domain)
    uri = workload_identity(trust_domain, namespace, service_account)
    key = generate_key()
    csr, checked = ca.check_csr(build_csr(key, uri))
    chain = ca.sign(csr, checked, ttl)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(out / "key.pem", key_pem(key), private=True)
    _write(out / "cert.pem", b"".join(chain))
    _write(out / "roots.pem", b"".join(ca.roots_pem))
    return uri
