"""Which caller address ztunnel hands the app (pure): only one the control plane says
belongs to a workload with the identity the peer proved."""
import pytest

from ztunnel.transparent import original_source

from zt_helpers import mesh

CLIENT = "spiffe://cluster.local/ns/default/sa/client"
POD = "10.244.2.3"   # web-2, the destination


@pytest.mark.parametrize("case, identity, peer_ip, pod_ip, source, why", [
    ("verified caller", CLIENT, "10.244.1.2", POD, "10.244.1.2", "verified"),
    ("caller claims another pod's address", CLIENT, "10.244.2.4", POD, None, "belongs to default/db"),
    ("no identity at all", None, "10.244.1.2", POD, None, "not to the identity it presented (None)"),
    ("unknown address", CLIENT, "10.9.9.9", POD, None, "no workload is known"),
    ("the pod itself (hairpin)", "spiffe://cluster.local/ns/default/sa/web", POD, POD, None, "the pod itself"),
    ("families differ", CLIENT, "10.244.1.2", "fd00::3", None, "different IP families"),
    ("garbage address", CLIENT, "not-an-ip", POD, None, "not an IP address"),
])
def test_original_source(case, identity, peer_ip, pod_ip, source, why):
    got, reason = original_source(mesh(), identity, peer_ip, pod_ip)
    assert got == source and why in reason, (case, reason)
