"""What each node receives (pure): every Namespace, Service, WorkloadEntry, Gateway and
HTTPRoute (any of them may be a destination), and only the policies it enforces: those
in namespaces with a workload on that node, or in the mesh root namespace."""
from __future__ import annotations

from typing import Mapping

from meshcore.identity import workload_identity
from meshcore.resources import ROOT_NAMESPACE, Resource

POLICY_KINDS = {"AuthorizationPolicy", "PeerAuthentication"}
View = dict[tuple, dict]


def node_view(resources: Mapping[tuple, Resource], node: str) -> View:
    local_ns = {r.namespace for r in resources.values() if r.kind == "WorkloadEntry" and r.spec.node == node}
    return {k: r.raw for k, r in resources.items()
            if r.kind not in POLICY_KINDS or r.namespace in local_ns or r.namespace == ROOT_NAMESPACE}


def delta(old: View, new: View) -> tuple[list[dict], list[list[str]]]:
    upserts = [v for k, v in new.items() if old.get(k) != v]
    deletes = [list(k) for k in old if k not in new]
    return upserts, deletes


def allowed_identities(resources: Mapping[tuple, Resource], node: str, trust_domain: str) -> set[str]:
    return {workload_identity(trust_domain, r.namespace, r.spec.service_account)
            for r in resources.values() if r.kind == "WorkloadEntry" and r.spec.node == node}
