import datetime as dt
import ssl

import pytest
import trio

from ztunnel.certs import CertificateManager, CertificateUnavailable
from zt_ca import TestCA

ID = "spiffe://cluster.local/ns/default/sa/web"
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def clock_now():
    return BASE + dt.timedelta(seconds=trio.current_time())


async def test_issues_renews_at_half_life_and_caches_contexts(autojump_clock):
    ca = TestCA(ttl=dt.timedelta(hours=2), now=clock_now)
    mgr = CertificateManager(ca, "cluster.local", now=clock_now)
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
        assert second.leaf.serial_number != first.leaf.serial_number
        assert mgr.ssl_context_for(ID) is not ctx
        assert ca.signed == [ID, ID]
        d = mgr.dump()
        assert d[0]["identity"] == ID and d[0]["state"] == "valid" and d[0]["serial"] == f"{second.leaf.serial_number:x}"
        n.cancel_scope.cancel()


async def test_failed_renewal_keeps_current_cert_and_retries(autojump_clock):
    ca = TestCA(ttl=dt.timedelta(hours=2), now=clock_now)
    mgr = CertificateManager(ca, "cluster.local", now=clock_now, max_backoff=60)
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
        assert mgr.bundle(ID).leaf.serial_number != first.leaf.serial_number
        assert mgr.dump()[0]["state"] == "valid"
        n.cancel_scope.cancel()


async def test_expired_cert_is_an_advising_error(autojump_clock):
    ca = TestCA(ttl=dt.timedelta(hours=2), now=clock_now)
    mgr = CertificateManager(ca, "cluster.local", now=clock_now, max_backoff=60)
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
