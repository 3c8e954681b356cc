"""A Pod becomes the workload shape the data plane already consumes (pure).

ztunnel and the node agent know WorkloadEntry (address, node, service account, labels,
named ports); a Pod read from the API server, or written in a config directory, is made
into exactly that, so neither has to learn Pods. A Pod is a workload once it is
scheduled (spec.nodeName) and has an address (status.podIP), until it terminates."""
from __future__ import annotations

from meshcore.resources import Resource, from_dict
from meshcore.resources.kinds import TRELLIS

FROM_POD = "trellis.dev/from-pod"  # annotation on the WorkloadEntry: where it came from
DONE_PHASES = ("Succeeded", "Failed")  # their IP may already belong to another pod


def pod_workload(pod: Resource) -> Resource | None:
    spec = pod.spec
    if spec.host_network or not spec.node_name or spec.status.pod_ip is None or spec.status.phase in DONE_PHASES:
        return None  # host-network pods share the node's address: never meshed, as in Istio ambient
    return from_dict({
        "apiVersion": TRELLIS, "kind": "WorkloadEntry",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": dict(pod.labels),
                     "annotations": {FROM_POD: "true"}},
        "spec": {"address": str(spec.status.pod_ip), "node": spec.node_name, "serviceAccount": spec.service_account,
                 "labels": dict(pod.labels), "ports": dict(spec.container_ports)}}, pod.source)


def pods_to_workloads(resources: list[Resource]) -> list[Resource]:
    out = []
    for r in resources:
        if r.kind != "Pod":
            out.append(r)
        elif (w := pod_workload(r)) is not None:
            out.append(w)
    return out
