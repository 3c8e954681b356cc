"""Pure: which pods of this node must be enrolled, with which mTLS mode, and what to do.

(resources, node, currently enrolled) -> actions. No I/O, so every rule is a table test.
A pod is a WorkloadEntry whose spec.node is this node, that has a network namespace (a VM
has none) and that the mesh rules (meshcore.mesh: enrollment, PeerAuthentication mode)
put in the mesh; ztunnel and the lab decide with the same rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from meshcore.mesh import STRICT, namespace_labels, peer_auth_mode, workload_enrollment

__all__ = ["Action", "Enroll", "Pod", "SetStrict", "Unenroll", "apply", "desired", "peer_auth_mode", "reconcile"]


@dataclass(frozen=True)
class Pod:
    uid: str               # "<ns>/<name>", the ZDS uid
    namespace: str
    name: str
    address: str
    service_account: str
    netns: str             # name under /run/netns or an absolute path


@dataclass(frozen=True)
class Enroll:
    pod: Pod
    strict: bool


@dataclass(frozen=True)
class Unenroll:
    uid: str


@dataclass(frozen=True)
class SetStrict:
    uid: str
    on: bool


Action = Enroll | Unenroll | SetStrict


def desired(resources: Mapping[Any, Any], node: str) -> dict[str, Enroll]:
    """uid -> Enroll for every pod of `node` that belongs in the mesh."""
    by_kind: dict[str, list] = {}
    for r in (resources.values() if isinstance(resources, Mapping) else resources):
        by_kind.setdefault(r.kind, []).append(r)
    namespaces = namespace_labels(by_kind.get("Namespace", []))
    policies = by_kind.get("PeerAuthentication", [])
    out: dict[str, Enroll] = {}
    for r in by_kind.get("WorkloadEntry", []):
        spec = r.spec
        netns = spec.network_namespace
        if spec.node != node or not netns or not workload_enrollment(r, namespaces).in_mesh:
            continue
        labels = dict(spec.labels)
        pod = Pod(uid=f"{r.namespace}/{r.name}", namespace=r.namespace, name=r.name,
                  address=str(spec.address), service_account=spec.service_account,
                  netns=str(netns))
        out[pod.uid] = Enroll(pod, peer_auth_mode(policies, r.namespace, labels) == STRICT)
    return out


def reconcile(resources: Mapping[Any, Any], node: str, enrolled: Mapping[str, Enroll]) -> list[Action]:
    """Actions that turn `enrolled` into what `resources` ask for.

    Order: unenroll first (frees what a changed pod held), then mode flips, then enrolls;
    uids sorted so a run is reproducible. A pod whose identity or netns changed is
    unenrolled and enrolled again, since ztunnel keys its listeners on both.
    """
    want = desired(resources, node)
    unenroll, flip, enroll = [], [], []
    for uid in sorted(enrolled):
        have, new = enrolled[uid], want.get(uid)
        if new is None or new.pod != have.pod:
            unenroll.append(Unenroll(uid))
            if new is not None:
                enroll.append(new)
        elif new.strict != have.strict:
            flip.append(SetStrict(uid, new.strict))
    enroll += [want[uid] for uid in sorted(want) if uid not in enrolled]
    return [*unenroll, *flip, *sorted(enroll, key=lambda a: a.pod.uid)]


def apply(enrolled: Mapping[str, Enroll], action: Action) -> dict[str, Enroll]:
    """The enrolled set after `action` succeeded (the agent records only what worked)."""
    out = dict(enrolled)
    if isinstance(action, Enroll):
        out[action.pod.uid] = action
    elif isinstance(action, Unenroll):
        out.pop(action.uid, None)
    else:
        out[action.uid] = Enroll(out[action.uid].pod, action.on)
    return out
