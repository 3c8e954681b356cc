import datetime as dt
import ssl

import pytest
import trio
from cryptography import x509

from controlplane.ca import CertificateAuthority
from meshcore.certs import CertificateManager, CertificateUnavailable
from zt_ca import TestCA, inprocess_keygen

ID = "spiffe://cluster.local/ns/default/sa/web"
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def clock_now():
    return BASE + dt.timedelta(seconds=trio.current_time())


async def test_issues_renews_at_half_life_and_caches_contexts(autojump_clock):
    ca = TestCA(ttl=dt.timedelta(hours=2), now=clock_now)
    mgr = CertificateManager(ca, "cluster.local", now=clock_now, keygen=inprocess_keygen)
    async with trio.open_nursery() as n:
        await n.start(mgr.run)
        mgr.want(ID)
        first = await mgr.wait_ready(ID)
        assert first.identity == ID
        ctx = mgr.ssl_context_for(ID)
        assert isinstance(ctx, ssl.SSLContext) and mgr.ssl_context_for(ID) is ctx
        assert mgr.ssl_context_for(ID, server=True) is not ctx
        await trio.sleep(3600 + 1)  # past half-life
        second = mgr.bundle(ID)
        assert second.serial != first.serial
        assert mgr.ssl_context_for(ID) is not ctx
        assert ca.signed == [ID, ID]
        d = mgr.dump()
        assert d[0]["identity"] == ID and d[0]["state"] == "valid" and d[0]["serial"] == f"{second.serial:x}"
        n.cancel_scope.cancel()


async def test_failed_renewal_keeps_current_cert_and_retries(autojump_clock):
    ca = TestCA(ttl=dt.timedelta(hours=2), now=clock_now)
    mgr = CertificateManager(ca, "cluster.local", now=clock_now, max_backoff=60, keygen=inprocess_keygen)
    async with trio.open_nursery() as n:
        await n.start(mgr.run)
        mgr.want(ID)
        first = await mgr.wait_ready(ID)
        ca.fail_with = ConnectionRefusedError("control plane down")
        await trio.sleep(3600 + 120)
        assert mgr.bundle(ID) is first  # still valid, still served
        assert mgr.dump()[0]["state"] == "renewal failing, current still valid"
        assert "control plane down" in mgr.dump()[0]["lastError"]
        ca.fail_with = None
        await trio.sleep(120)
        assert mgr.bundle(ID).serial != first.serial
        assert mgr.dump()[0]["state"] == "valid"
        n.cancel_scope.cancel()


async def test_expired_cert_is_an_advising_error(autojump_clock):
    ca = TestCA(ttl=dt.timedelta(hours=2), now=clock_now)
    mgr = CertificateManager(ca, "cluster.local", now=clock_now, max_backoff=60, keygen=inprocess_keygen)
    async with trio.open_nursery() as n:
        await n.start(mgr.run)
        mgr.want(ID)
        await mgr.wait_ready(ID)
        ca.fail_with = ConnectionRefusedError("control plane down")
        await trio.sleep(3 * 3600)
        with pytest.raises(CertificateUnavailable, match="expired"):
            mgr.ssl_context_for(ID)
        n.cancel_scope.cancel()


async def test_release_drops_identity_and_unknown_is_clear():
    ca = TestCA()
    mgr = CertificateManager(ca, "cluster.local")
    with pytest.raises(CertificateUnavailable, match="reachable"):
        mgr.ssl_context_for(ID)
    with pytest.raises(ValueError):
        mgr.want("spiffe://bad")
    async with trio.open_nursery() as n:
        await n.start(mgr.run)
        mgr.want(ID)
        mgr.want(ID)
        await mgr.wait_ready(ID)
        mgr.release(ID)
        assert mgr.dump()[0]["pods"] == 1
        mgr.release(ID)
        assert mgr.dump() == []
        n.cancel_scope.cancel()


class _ControlPlaneSigner:
    """The real CA behind CertificateManager's Signer interface (what ControlPlaneClient.sign does)."""

    def __init__(self, ca):
        self.ca = ca

    async def sign(self, csr_pem: bytes):
        return self.ca.sign_workload_csr(csr_pem), list(self.ca.roots_pem)


async def test_openssl_keys_signed_by_the_control_plane_ca(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path, "cluster.local")
    mgr = CertificateManager(_ControlPlaneSigner(ca), "cluster.local")   # the default keygen: openssl
    async with trio.open_nursery() as n:
        await n.start(mgr.run)
        mgr.want(ID)
        b = await mgr.wait_ready(ID)
        leaf = x509.load_pem_x509_certificate(b.chain_pem[0])
        assert (b.identity, b.serial, b.not_after) == (ID, leaf.serial_number, leaf.not_valid_after_utc)
        assert mgr.dump()[0]["serial"] == f"{leaf.serial_number:x}"
        assert isinstance(mgr.ssl_context_for(ID, server=True), ssl.SSLContext)   # key matches the leaf
        n.cancel_scope.cancel()


def test_the_test_ca_certificates_read_the_same_as_with_cryptography():
    ca = TestCA()
    b = ca.bundle(ID)
    leaf = x509.load_pem_x509_certificate(b.chain_pem[0])
    assert (b.identity, b.serial, b.not_before, b.not_after) == (
        ID, leaf.serial_number, leaf.not_valid_before_utc, leaf.not_valid_after_utc)


class _CountingSigner:
    """The real CA's signing code behind the control plane's `sign` interface, counting
    CSRs and stopping a runaway loop at `limit` so a storm fails the test instead of hanging it."""

    def __init__(self, ca: CertificateAuthority, limit: int = 100) -> None:
        self.ca, self.limit, self.times = ca, limit, []
        self.scope = trio.CancelScope()

    async def sign(self, csr_pem: bytes):
        self.times.append(trio.current_time())
        if len(self.times) >= self.limit:
            self.scope.cancel()
        await trio.sleep(0.01)  # a round trip
        return self.ca.sign_workload_csr(csr_pem), list(self.ca.roots_pem)


async def _run_for(signer: _CountingSigner, seconds: float, **kw) -> CertificateManager:
    mgr = CertificateManager(signer, "cluster.local", now=clock_now, keygen=inprocess_keygen, **kw)
    with signer.scope:
        async with trio.open_nursery() as n:
            await n.start(mgr.run)
            mgr.want(ID)
            await trio.sleep(seconds)
            n.cancel_scope.cancel()
    return mgr


async def test_short_lifetime_from_the_real_ca_renews_at_half_life_not_in_a_loop(autojump_clock, tmp_path):
    """Issue 13 defect 3: the CA backdates not-before by a minute, so with 30 s certificates a
    half-life counted from not-before lay before issuance and every renewal asked again at
    once (5,000 CSRs in 51 s for 5 identities)."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", ttl=dt.timedelta(seconds=30))
    ca.now = clock_now
    signer = _CountingSigner(ca)
    mgr = await _run_for(signer, 61)
    # issued at 0, then every 15 s (half of the 30 s each certificate has when it arrives)
    assert len(signer.times) == 5, f"{len(signer.times)} CSRs in 61 s at {signer.times[:8]}"
    gaps = [b - a for a, b in zip(signer.times, signer.times[1:])]
    assert all(14.9 < g < 15.2 for g in gaps), gaps
    assert mgr.dump()[0]["state"] == "valid"


async def test_a_ca_handing_out_due_certificates_gets_an_error_and_backoff(autojump_clock, tmp_path, caplog):
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", ttl=dt.timedelta(seconds=1))
    ca.now = clock_now
    signer = _CountingSigner(ca)
    mgr = await _run_for(signer, 60, min_backoff=0.5, max_backoff=30)
    # 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5: exponential, not a loop
    assert len(signer.times) <= 8, f"{len(signer.times)} CSRs in 60 s: {signer.times[:10]}"
    gaps = [b - a for a, b in zip(signer.times, signer.times[1:])]
    assert all(b > a for a, b in zip(gaps, gaps[1:])), f"no backoff between CSRs: {gaps}"
    err = mgr.dump()[0]["lastError"]
    assert "CertificateDue" in err and ID in err and "already due" in err and "received at" in err
    assert any("control plane's clock" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("lifetime,backdate,expected", [
    (30, 60, 15),            # the e2e lab: half of what is left from arrival, not from not-before
    (86400, 60, 43200),      # the default lifetime
    (4, 0, 3.2),             # too short for the 10 s floor: 80% of what is left
    (3600, -120, 1860),      # not-before after arrival (the CA's clock ahead): count from not-before
])
def test_renewal_time_counts_from_arrival(lifetime, backdate, expected):
    from meshcore.identity import renewal_time
    received = BASE
    got = renewal_time(received - dt.timedelta(seconds=backdate), received + dt.timedelta(seconds=lifetime), received)
    assert (got - received).total_seconds() == pytest.approx(expected)
