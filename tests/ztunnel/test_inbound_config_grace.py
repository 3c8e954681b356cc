"""The waypoint-bypass rule while a waypoint is put in front of a pod or taken away
(ztunnel/inbound.py, Inbound._settle): the config reaches this ztunnel and the callers' at
different moments, so for ProxyInputs.config_grace a tunnel the rule refuses is admitted
when the snapshot before the change admitted it, or waits for a snapshot that does."""
from __future__ import annotations

import trio

from meshcore.resources import parse_documents
from meshcore.state import State
from ztunnel.inbound import Inbound
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.podinfo import PodInfo

TD = "spiffe://cluster.local"
CLIENT, WAYPOINT = f"{TD}/ns/shop/sa/client", f"{TD}/ns/shop/sa/waypoint"
GRACE = 0.5


def world(waypoint: bool) -> State:
    label = ", trellis.dev/use-waypoint: waypoint" if waypoint else ""
    loaded = parse_documents(f"""
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{trellis.dev/dataplane-mode: ambient{label}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec: {{gatewayClassName: trellis-waypoint}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: waypoint-0, namespace: shop, labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}}}
spec: {{address: 10.1.0.10, serviceAccount: waypoint, node: n1}}
---
apiVersion: trellis.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: cart-1, namespace: shop}}
spec: {{address: 10.1.0.20, serviceAccount: cart, labels: {{app: cart}}, node: n1}}
""", "t.yaml")
    assert not loaded.errors, loaded.errors
    return State.from_resources(loaded.resources)


def inbound(current: list[State]) -> Inbound:
    inputs = ProxyInputs(state=lambda: current[0], certs=None, metrics=Metrics(), origdst_fd=lambda: None,  # type: ignore[arg-type]
                         config_grace=GRACE)
    return Inbound(PodInfo("shop", "cart-1", "10.1.0.20", "cart", -1), inputs)


async def test_a_waypoint_put_in_front_does_not_refuse_callers_that_came_direct_until_the_grace_is_over():
    current = [world(False)]
    ib = inbound(current)
    before = ib.view()
    current[0] = world(True)   # the label reached this ztunnel, not yet the caller's
    now = ib.view()
    assert now.fronts and not before.fronts
    view, in_grace = await ib._settle(now, CLIENT)
    assert in_grace and view is before   # decided as the caller's ztunnel sees it
    await trio.sleep(GRACE + 0.1)
    view, in_grace = await ib._settle(now, CLIENT)   # waits the grace out for a snapshot, none comes
    assert not in_grace and view is now and ib._bypass(view.fronts, CLIENT)
    # the waypoint's replicas were never refused
    assert ib._bypass(now.fronts, WAYPOINT) is None


async def test_a_waypoint_taken_away_first_at_the_caller_is_waited_for_not_refused():
    current = [world(True)]
    ib = inbound(current)
    ib.view()
    got = []
    async with trio.open_nursery() as n:
        async def settle():
            got.append(await ib._settle(ib.view(), CLIENT))
        n.start_soon(settle)
        await trio.sleep(0.1)
        assert got == []   # waiting for a snapshot that admits it
        current[0] = world(False)   # the unlabel reaches this ztunnel after the caller's
    [(view, in_grace)] = got
    assert not in_grace and not view.fronts and ib._bypass(view.fronts, CLIENT) is None
