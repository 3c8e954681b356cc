"""A waypoint as a control-plane caller: its own workload certificate, over real mTLS with the real client."""
import re

import pytest
import trio

from controlplane.ca import build_csr, generate_key, key_pem
from controlplane.views import waypoint_service_accounts, waypoint_sign_refusal, waypoint_watch_refusal
from cp_helpers import running_api, write_config
from meshcore.cpclient import ControlPlaneClient, ControlPlaneError
from meshcore.identity import CertBundle
from meshcore.resources import parse_documents
from meshcore.wire import watch

TD = "spiffe://cluster.local"
WP = f"{TD}/ns/shop/sa/wp"
CUSTOM = f"{TD}/ns/shop/sa/wp-custom"

WORLD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {trellis.dev/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: custom, namespace: shop}
spec: {gatewayClassName: trellis-waypoint}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: custom-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: custom}}
spec: {address: 10.244.1.50, node: node1, serviceAccount: wp-custom}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: cart, namespace: shop}
spec: {address: 10.244.1.51, node: node1, serviceAccount: cart, labels: {app: cart}}
"""


def credential(ca, identity: str) -> CertBundle:
    key = generate_key()
    return CertBundle(key_pem(key), tuple(ca.sign_workload_csr(build_csr(key, identity))), ca.roots_pem)


def waypoint_client(ca, port, identity, name) -> ControlPlaneClient:
    return ControlPlaneClient(("127.0.0.1", port), credential(ca, identity), name, subscriber=watch.WAYPOINT)


def setup(tmp_path):
    cfg = write_config(tmp_path / "config")
    (cfg / "shop.yaml").write_text(WORLD)


async def test_a_waypoint_watches_its_gateway_and_renews_its_own_certificate(tmp_path):
    setup(tmp_path)
    async with running_api(tmp_path) as (ca, source, api, port, nursery):
        for name in ("wp", "shop/wp"):   # the bare name (wpproxy) and the "<ns>/<name>" form
            c = waypoint_client(ca, port, WP, name)
            got = trio.Event()
            nursery.start_soon(c.watch, lambda res, v: got.set())
            with trio.fail_after(10):
                await got.wait()
            assert ("Gateway", "shop", "wp") in c.resources and ("Gateway", "shop", "custom") not in c.resources
        chain, roots = await waypoint_client(ca, port, WP, "wp").sign(build_csr(generate_key(), WP))
        assert CertBundle(key_pem(generate_key()), tuple(chain), tuple(roots)).identity == WP
        # a replica running as another ServiceAccount (its pods say so) is that waypoint's too
        chain, _ = await waypoint_client(ca, port, CUSTOM, "custom").sign(build_csr(generate_key(), CUSTOM))
        assert api.stats["signed"] == 2 and api.stats["waypoint_refused"] == 0
        nursery.cancel_scope.cancel()


async def test_what_a_workload_caller_may_not_do(tmp_path):
    setup(tmp_path)
    async with running_api(tmp_path) as (ca, source, api, port, nursery):
        wp, cart = waypoint_client(ca, port, WP, "wp"), waypoint_client(ca, port, f"{TD}/ns/shop/sa/cart", "wp")
        signs = [
            (wp, f"{TD}/ns/shop/sa/cart", "may only have its own certificate signed: the CSR asks for .*sa/cart"),
            (wp, f"{TD}/ns/default/sa/web", "may only have its own certificate signed"),
            (cart, f"{TD}/ns/shop/sa/cart", "not a node credential, nor the ServiceAccount of any waypoint"),
        ]
        for client, identity, message in signs:
            with pytest.raises(ControlPlaneError, match=message):
                await client.sign(build_csr(generate_key(), identity))
        watches = [
            (WP, "missing", "no Gateway of class trellis-waypoint named missing in namespace shop"),
            (WP, "edge", "it has class istio"),
            (f"{TD}/ns/shop/sa/cart", "wp", "ServiceAccount cart is not the waypoint's"),
            (WP, "other/wp", "may only watch a waypoint \\(Gateway\\) of namespace shop"),
        ]
        for identity, name, message in watches:
            c = waypoint_client(ca, port, identity, name)
            with trio.fail_after(10):
                while c.last_error is None:   # the client retries: its first failure is what we want
                    async with trio.open_nursery() as n:
                        n.start_soon(c.watch, lambda res, v: None)
                        await trio.sleep(0.3)
                        n.cancel_scope.cancel()
            assert re.search(message, c.last_error), c.last_error
        # each refused watch at least once (the client retries), each refused sign once
        assert api.stats["refused"] == 3 and api.stats["waypoint_refused"] >= 7
        # nodes keep their rights: a node still signs for its workloads
        node = ControlPlaneClient(("127.0.0.1", port), ca.issue_node_credential("node1"), "node1")
        await node.sign(build_csr(generate_key(), f"{TD}/ns/shop/sa/cart"))
        nursery.cancel_scope.cancel()


def test_refusals_pure():
    resources = {r.key: r for r in parse_documents(WORLD, "w.yaml").resources}
    assert waypoint_service_accounts(resources, "shop", "custom") == {"custom", "wp-custom"}
    assert waypoint_watch_refusal(resources, WP, "shop", "wp") is None
    assert waypoint_sign_refusal(resources, WP, "cluster.local") is None
    assert "trust domain cluster.local" in waypoint_sign_refusal(resources, "spiffe://x/ns/shop/sa/wp", "cluster.local")
    assert "neither a node credential nor" in waypoint_sign_refusal(resources, "spiffe://cluster.local/foo", "cluster.local")
    # once the Gateway is gone, its ServiceAccount loses its rights
    del resources[("Gateway", "shop", "wp")]
    assert "no Gateway of class trellis-waypoint named wp" in waypoint_watch_refusal(resources, WP, "shop", "wp")
    assert "not a node credential, nor" in waypoint_sign_refusal(resources, WP, "cluster.local")
