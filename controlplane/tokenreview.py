"""Who is asking, in a cluster: a node or a waypoint, from its ServiceAccount token.

ztunnel (and the node agent) send the DaemonSet pod's projected ServiceAccount token in
the first message of each control-plane request; a waypoint sends its own pod's. The
control plane asks the API server (TokenReview, with the audience the tokens are
projected for) who that is, then decides, as Istio's CA does (kubeauth + node authorizer):
- the token must authenticate, for our audience (an expired, forged or revoked token,
  one whose pod is gone, or one meant for another audience, is refused);
- it must be bound to a pod (`kubectl create token` without --bound-object-kind is not);
- a trusted node account (ztunnel's ServiceAccount) speaks for a node: the token's
  `authentication.kubernetes.io/node-name` extra (Kubernetes >= 1.30 puts it there),
  else the bound pod's spec.nodeName, looked up by name. That node then gets exactly
  what a node credential would: certificates only for identities with a pod scheduled
  on it, and its own watch view;
- any other account may only be a waypoint replica (controlplane/waypointauth.py): its
  pod, checked by name and uid, runs under that account in a Deployment the control
  plane made for a Gateway of class trellis-waypoint. It then is its workload identity
  `spiffe://<td>/ns/<ns>/sa/<sa>` and nothing more: it renews only that certificate and
  watches only its own Gateway's view."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshcore.identity import node_identity

if TYPE_CHECKING:  # lightkube and httpx load only in a control plane that talks to a cluster
    from kubewatch.client import KubeApi

log = logging.getLogger("trellis.controlplane.tokenreview")

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
NODE_NAME = "authentication.kubernetes.io/node-name"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
DEFAULT_AUDIENCE = "trellis-ca"
DEFAULT_NODE_ACCOUNTS = ("trellis-system/ztunnel",)
SA_PREFIX = "system:serviceaccount:"


class NodeAuthRefused(Exception):
    """The caller is not a node we may serve; `reason` is the metrics label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    account: str              # "<namespace>/<serviceaccount>"
    pod: tuple[str, str]      # (namespace, name) of the pod the token is bound to
    node: str | None          # from the token's claims; None: look the pod up
    pod_uid: str | None = None


@dataclass(frozen=True)
class TokenCaller:
    """What a token proved: the identity the request is judged as (a node credential's
    `spiffe://td/trellis/node/<node>`, or a waypoint's workload identity) and, for a
    waypoint, the (namespace, name) of its Gateway."""
    identity: str
    gateway: tuple[str, str] | None = None


def review_body(token: str, audience: str) -> dict:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]}}


def _first(extra: dict, key: str) -> str | None:
    values = extra.get(key)
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0]:
        return values[0]
    return None


def caller_from_review(review: Any, audience: str) -> Caller:
    """The TokenReview's answer -> the pod-bound ServiceAccount caller, or NodeAuthRefused (pure)."""
    status = review.get("status") if isinstance(review, dict) else None
    if not isinstance(status, dict):
        raise NodeAuthRefused("review_failed", "the API server's TokenReview answer has no status")
    if not status.get("authenticated"):
        why = status.get("error") or "not authenticated"
        raise NodeAuthRefused("invalid_token", f"the ServiceAccount token does not authenticate ({why}); "
                                               "is it expired, or from another cluster?")
    audiences = status.get("audiences")
    if isinstance(audiences, list) and audience not in audiences:
        raise NodeAuthRefused("wrong_audience", f"the token is for audiences {audiences}, not {audience!r}; "
                                                f"project it with `audience: {audience}`")
    user = status.get("user") if isinstance(status.get("user"), dict) else {}
    username = str(user.get("username") or "")
    if not username.startswith(SA_PREFIX) or username.count(":") != 3:
        raise NodeAuthRefused("untrusted_account", f"{username or 'the caller'} is not a ServiceAccount")
    account = "/".join(username[len(SA_PREFIX):].split(":"))
    extra = user.get("extra") if isinstance(user.get("extra"), dict) else {}
    pod = _first(extra, POD_NAME)
    if pod is None:
        raise NodeAuthRefused("not_pod_bound", f"the token of {account} is not bound to a pod, so it names no node "
                                               "and no waypoint; mount the pod's projected ServiceAccount token")
    return Caller(account, (account.split("/")[0], pod), _first(extra, NODE_NAME), _first(extra, POD_UID))


class TokenReviewer:
    def __init__(self, api: KubeApi, audience: str = DEFAULT_AUDIENCE,
                 node_accounts: tuple[str, ...] = DEFAULT_NODE_ACCOUNTS):
        self.api, self.audience, self.node_accounts = api, audience, tuple(node_accounts)

    async def authenticate(self, token: Any, trust_domain: str) -> TokenCaller:
        """Who a token speaks for (a node, or one waypoint replica), or NodeAuthRefused."""
        caller = await self._review(token)
        if caller.account in self.node_accounts:
            return TokenCaller(node_identity(trust_domain, await self._node(caller)))
        from .waypointauth import waypoint_of
        identity, gateway = await waypoint_of(self.api, caller, trust_domain, self.node_accounts)
        return TokenCaller(identity, gateway)

    async def node_of(self, token: Any) -> str:
        """The node a token speaks for, or NodeAuthRefused (a waypoint's token is not a node's)."""
        caller = await self._review(token)
        if caller.account not in self.node_accounts:
            raise NodeAuthRefused("untrusted_account", f"ServiceAccount {caller.account} is not a node account "
                                                       f"(trusted: {', '.join(self.node_accounts)})")
        return await self._node(caller)

    async def _review(self, token: Any) -> Caller:
        if not isinstance(token, str) or not token:
            raise NodeAuthRefused("no_token", "no ServiceAccount token in the request (and no node certificate)")
        from kubewatch.client import describe
        try:
            review = await self.api.post(REVIEW_PATH, review_body(token, self.audience))
        except Exception as exc:  # the API server is away: refuse now, the caller retries
            raise NodeAuthRefused("review_failed", f"TokenReview failed: {describe(exc)}") from None
        return caller_from_review(review, self.audience)

    async def _node(self, caller: Caller) -> str:
        if caller.node:
            return caller.node
        ns, name = caller.pod
        pod = await get_or_refuse(self.api, f"/api/v1/namespaces/{ns}/pods/{name}", f"the token's pod {ns}/{name}")
        node = ((pod or {}).get("spec") or {}).get("nodeName")
        if not node:
            raise NodeAuthRefused("pod_not_found", f"the token's pod {ns}/{name} does not exist or is not scheduled")
        return node


async def get_or_refuse(api: KubeApi, path: str, what: str) -> dict | None:
    """GET one object (None: it does not exist); an API failure refuses the request (review_failed)."""
    from kubewatch.client import describe
    try:
        return await api.get(path)
    except Exception as exc:  # an error status, an outage, a timeout: refuse now, the caller retries
        raise NodeAuthRefused("review_failed", f"reading {what} failed: {describe(exc)}") from None
