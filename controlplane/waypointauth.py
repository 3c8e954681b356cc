"""A waypoint replica's ServiceAccount token -> its workload identity (controlplane/tokenreview.py).

In a cluster a waypoint has no certificate to start with: it proves who it is with its
own pod's projected ServiceAccount token (audience the CA's). The TokenReview says which
account and which pod (name and uid claims) the token is bound to; the control plane then
reads that pod and its owners and accepts it only when all of this holds:
- the pod exists with the token's uid (a replaced pod's token is worth nothing) and runs
  as the token's ServiceAccount;
- its controller is a ReplicaSet whose controller is a Deployment the control plane made
  for a waypoint (label `trellis.dev/managed-by: trellis-controlplane`, controller
  ownerReference to a Gateway), running as that same ServiceAccount;
- that Gateway exists with the owner's uid and class trellis-waypoint, and the pod carries
  its name in `gateway.networking.k8s.io/gateway-name`.
Then the caller is `spiffe://<td>/ns/<pod namespace>/sa/<pod serviceAccountName>`, for
that Gateway only. `waypoint_pod_refusal` is the pure decision; `waypoint_of` reads the
objects (GET of a pod, a ReplicaSet, a Deployment, a Gateway)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from meshcore.identity import workload_identity
from meshcore.mesh import GATEWAY_NAME_LABEL
from meshcore.resources.gateway import WAYPOINT_CLASS

from .tokenreview import Caller, NodeAuthRefused, get_or_refuse
from .waypoints import MANAGED_BY, MANAGER

if TYPE_CHECKING:
    from kubewatch.client import KubeApi

REFUSED = "not_a_waypoint_pod"


def controller_of(obj: dict | None) -> dict:
    """The ownerReference with `controller: true` (Kubernetes allows one), or {}."""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, dict) and r.get("controller")), {})


def _sa(obj: dict | None, template: bool = False) -> str | None:
    spec = (obj or {}).get("spec") or {}
    if template:
        spec = (spec.get("template") or {}).get("spec") or {}
    return spec.get("serviceAccountName") or "default"


def waypoint_pod_refusal(pod: dict, replicaset: dict | None, deployment: dict | None, gateway: dict | None,
                         account: str) -> str | None:
    """Why `pod` (read by the token's name and uid) is not a replica of a waypoint the
    control plane runs as `account` ("<ns>/<sa>"), or None (pure)."""
    meta = pod.get("metadata") or {}
    ns, name = meta.get("namespace"), meta.get("name")
    if f"{ns}/{_sa(pod)}" != account:
        return f"pod {ns}/{name} runs as ServiceAccount {_sa(pod)}, not {account}"
    wanted = (meta.get("labels") or {}).get(GATEWAY_NAME_LABEL)
    if not wanted:
        return f"pod {ns}/{name} has no {GATEWAY_NAME_LABEL} label"
    rs_ref = controller_of(pod)
    if rs_ref.get("kind") != "ReplicaSet" or replicaset is None:
        return f"pod {ns}/{name} is not controlled by a ReplicaSet (of a waypoint Deployment)"
    d_ref = controller_of(replicaset)
    if d_ref.get("kind") != "Deployment" or deployment is None:
        return f"ReplicaSet {ns}/{rs_ref.get('name')} of pod {name} is not controlled by a Deployment"
    dmeta = deployment.get("metadata") or {}
    if (dmeta.get("labels") or {}).get(MANAGED_BY) != MANAGER:
        return f"Deployment {ns}/{dmeta.get('name')} was not made by the control plane for a waypoint"
    g_ref = controller_of(deployment)
    if g_ref.get("kind") != "Gateway" or g_ref.get("name") != wanted:
        return f"Deployment {ns}/{dmeta.get('name')} does not belong to Gateway {wanted}"
    if gateway is None or (gateway.get("metadata") or {}).get("uid") != g_ref.get("uid"):
        return f"Gateway {ns}/{wanted} that owns Deployment {dmeta.get('name')} no longer exists"
    if (gateway.get("spec") or {}).get("gatewayClassName") != WAYPOINT_CLASS:
        return f"Gateway {ns}/{wanted} is not of class {WAYPOINT_CLASS}"
    if _sa(deployment, template=True) != _sa(pod):
        return f"Deployment {ns}/{dmeta.get('name')} runs as {_sa(deployment, template=True)}, not {_sa(pod)}"
    return None


async def waypoint_of(api: KubeApi, caller: Caller, trust_domain: str, node_accounts: tuple[str, ...]
                      ) -> tuple[str, tuple[str, str]]:
    """(identity, (namespace, gateway)) of a waypoint replica's token, or NodeAuthRefused."""
    ns, name = caller.pod
    not_node = f"ServiceAccount {caller.account} is not a node account (trusted: {', '.join(node_accounts)})"
    pod = await get_or_refuse(api, f"/api/v1/namespaces/{ns}/pods/{name}", f"the token's pod {ns}/{name}")
    if pod is None or (caller.pod_uid and (pod.get("metadata") or {}).get("uid") != caller.pod_uid):
        raise NodeAuthRefused("pod_not_found", f"{not_node}, and the token's pod {ns}/{name} "
                                               f"{'does not exist' if pod is None else 'was replaced (another uid)'}")
    rs_ref = controller_of(pod)
    rs = await get_or_refuse(api, f"/apis/apps/v1/namespaces/{ns}/replicasets/{rs_ref['name']}",
                             f"pod {name}'s ReplicaSet") if rs_ref.get("kind") == "ReplicaSet" else None
    d_ref = controller_of(rs)
    deployment = await get_or_refuse(api, f"/apis/apps/v1/namespaces/{ns}/deployments/{d_ref['name']}",
                                     f"pod {name}'s Deployment") if d_ref.get("kind") == "Deployment" else None
    g_ref = controller_of(deployment)
    gateway = await get_or_refuse(api, f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/gateways/{g_ref['name']}",
                                  f"pod {name}'s Gateway") if g_ref.get("kind") == "Gateway" else None
    why = waypoint_pod_refusal(pod, rs, deployment, gateway, caller.account)
    if why:
        raise NodeAuthRefused(REFUSED, f"{not_node}, nor of a waypoint: {why}")
    return workload_identity(trust_domain, ns, _sa(pod)), (ns, g_ref["name"])
