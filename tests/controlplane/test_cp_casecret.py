"""The CA in a Secret, against the API-server stand-in: replicas racing to create it end
up with one CA; a user-supplied `cacerts` intermediate wins; a broken Secret is named."""
import base64
import datetime as dt

import pytest
import trio

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from controlplane.ca import CertificateAuthority, build_csr, generate_key, key_pem
from controlplane.casecret import ROOT_SECRET, CaSecretError, load_or_create
from kube_fixtures import kubeconfig
from trellis.lab.apiserver import ApiServerStandIn
from kubewatch.client import KubeApi, load_config

NS = "trellis-system"


async def with_api(tmp_path, standin, fn):
    result = error = None
    async with trio.open_nursery() as nursery:
        port = await nursery.start(standin.serve)
        api = KubeApi(load_config(kubeconfig(tmp_path, port)))
        try:
            result = await fn(api)
        except Exception as exc:  # raised below, outside the nursery (no exception group)
            error = exc
        await api.aclose()
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


async def test_two_control_planes_racing_to_create_end_up_with_one_ca(tmp_path):
    standin = ApiServerStandIn(race_create=ROOT_SECRET)
    results = {}

    async def replicas(api):
        async def one(i):
            results[i] = await load_or_create(api, NS, "cluster.local")
        async with trio.open_nursery() as n:
            n.start_soon(one, 0)
            n.start_soon(one, 1)

    await with_api(tmp_path, standin, replicas)
    (ca0, how0), (ca1, how1) = results[0], results[1]
    assert ca0.roots_pem == ca1.roots_pem
    assert ca0.key.private_numbers() == ca1.key.private_numbers()
    assert sorted([how0, how1]) == [f"Secret {NS}/{ROOT_SECRET} (created)",
                                    f"Secret {NS}/{ROOT_SECRET} (read after losing the create to another replica)"]
    creates = [r for r in standin.requests if r.path == f"/api/v1/namespaces/{NS}/secrets"]
    assert len(creates) == 2 and list(standin.secrets) == [(NS, ROOT_SECRET)]
    assert base64.b64decode(standin.secrets[(NS, ROOT_SECRET)]["data"]["root-cert.pem"]) == ca1.roots_pem[0]

    # a restart reads the same CA and creates nothing
    again, how = await with_api(tmp_path, standin, lambda api: load_or_create(api, NS, "cluster.local"))
    assert again.roots_pem == ca0.roots_pem and how.endswith("(read)")


async def test_a_user_supplied_cacerts_intermediate_wins(tmp_path):
    root = CertificateAuthority.load_or_create(tmp_path / "root", "cluster.local")
    key = generate_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inter")]))
            .issuer_name(root.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root.key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    files = {"ca-cert.pem": pem, "ca-key.pem": key_pem(key), "cert-chain.pem": pem + root.roots_pem[0],
             "root-cert.pem": root.roots_pem[0]}
    standin = ApiServerStandIn()
    standin.secrets[(NS, "cacerts")] = {"metadata": {"name": "cacerts"},
                                         "data": {k: base64.b64encode(v).decode() for k, v in files.items()}}
    ca, how = await with_api(tmp_path, standin, lambda api: load_or_create(api, NS, "cluster.local"))
    assert how == f"Secret {NS}/cacerts (user-supplied)"
    assert ca.roots_pem == root.roots_pem and ca.chain_pem == (pem,)
    uri = "spiffe://cluster.local/ns/shop/sa/web"  # issued chains carry the intermediate
    assert ca.sign_workload_csr(build_csr(generate_key(), uri))[1:] == [pem]
    assert standin.secrets.keys() == {(NS, "cacerts")}  # no root of our own made


async def test_a_broken_secret_is_named(tmp_path):
    standin = ApiServerStandIn()
    standin.secrets[(NS, ROOT_SECRET)] = {"metadata": {"name": ROOT_SECRET}, "data": {"root-cert.pem": "bm90IGEgY2VydA=="}}
    with pytest.raises(CaSecretError, match=f"Secret {NS}/{ROOT_SECRET}: root-key.pem missing"):
        await with_api(tmp_path, standin, lambda api: load_or_create(api, NS, "cluster.local"))
