"""ztunnel's L4 decision sees the tunnel's peer address (ipBlocks, source.ip) and the pod's own
(destination.ip), and remembers a decision per (identity, port, address)."""
from __future__ import annotations

from meshcore import authz
from meshcore.state import AuthzPolicy, Condition, Rule, Source, State
from ztunnel.inbound import Inbound
from ztunnel.inputs import ProxyInputs
from ztunnel.metrics import Metrics
from ztunnel.podinfo import PodInfo

from zt_helpers import svc, wl

CLIENT = "spiffe://cluster.local/ns/default/sa/client"


def _view(*policies: AuthzPolicy):
    state = State(workloads=[wl("client", "10.244.1.2"), wl("web", "10.244.2.3")], services=[svc("web", "10.96.0.10")],
                  enrolled_namespaces=frozenset({"default"}), policies=list(policies))
    inputs = ProxyInputs(state=lambda: state, certs=None, metrics=Metrics(), origdst_fd=lambda: None)  # type: ignore[arg-type]
    return Inbound(PodInfo("default", "web", "10.244.2.3", "web", -1), inputs).view()


def test_ip_blocks_decide_by_the_peer_address_and_each_address_is_remembered():
    only_node1 = AuthzPolicy("default", "node1-pods", selector=(("app", "web"),),
                             rules=(Rule(from_=(Source(ip_blocks=("10.244.1.0/24",)),)),))
    view = _view(only_node1)
    assert isinstance(view.decide(CLIENT, 8080, "10.244.1.2"), authz.Allow)
    denied = view.decide(CLIENT, 8080, "10.244.2.9")
    assert isinstance(denied, authz.Deny) and "10.244.2.9" in denied.reason
    assert isinstance(view.decide(CLIENT, 8080), authz.Deny)   # no address known: no block matches
    assert set(view.decisions) == {(CLIENT, 8080, "10.244.1.2"), (CLIENT, 8080, "10.244.2.9"), (CLIENT, 8080, None)}


def test_destination_ip_is_the_pods_own_address():
    here = AuthzPolicy("default", "dst", action="DENY", selector=(("app", "web"),),
                       rules=(Rule(when=(Condition("destination.ip", ("10.244.2.3",)),)),))
    elsewhere = AuthzPolicy("default", "dst", action="DENY", selector=(("app", "web"),),
                            rules=(Rule(when=(Condition("destination.ip", ("10.244.9.0/24",)),)),))
    assert isinstance(_view(here).decide(CLIENT, 8080, "10.244.1.2"), authz.Deny)
    assert isinstance(_view(elsewhere).decide(CLIENT, 8080, "10.244.1.2"), authz.Allow)
