"""Node authorization in a cluster: which node is asking, from its ServiceAccount token.

ztunnel (and the node agent) send the DaemonSet pod's projected ServiceAccount token in
the first message of each control-plane request. The control plane asks the API server
(TokenReview, with the audience the chart projects the token for) who that is, then
decides, as Istio's CA does (kubeauth + node authorizer):
- the token must authenticate, for our audience (an expired, forged or revoked token,
  or one meant for another audience, is refused);
- it must belong to a trusted node account (ztunnel's ServiceAccount): any other pod's
  token names a pod, not a node, and may not ask for other workloads' certificates;
- it must be bound to a pod (`kubectl create token` without --bound-object-kind is not):
  the node is the token's `authentication.kubernetes.io/node-name` extra (Kubernetes
  >= 1.30 puts it there), else the bound pod's spec.nodeName, looked up by name.
The node so found then gets exactly what a node credential would: certificates only for
identities with a pod scheduled on it, and its own watch view."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # lightkube and httpx load only in a control plane that talks to a cluster
    from kubewatch.client import KubeApi

log = logging.getLogger("trellis.controlplane.tokenreview")

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
NODE_NAME = "authentication.kubernetes.io/node-name"
POD_NAME = "authentication.kubernetes.io/pod-name"
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


def review_body(token: str, audience: str) -> dict:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]}}


def _first(extra: dict, key: str) -> str | None:
    values = extra.get(key)
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0]:
        return values[0]
    return None


def caller_from_review(review: Any, audience: str, node_accounts: tuple[str, ...]) -> Caller:
    """The TokenReview's answer -> the caller, or NodeAuthRefused (pure)."""
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
    if account not in node_accounts:
        raise NodeAuthRefused("untrusted_account", f"ServiceAccount {account} is not a node account "
                                                   f"(trusted: {', '.join(node_accounts)})")
    extra = user.get("extra") if isinstance(user.get("extra"), dict) else {}
    pod = _first(extra, POD_NAME)
    node = _first(extra, NODE_NAME)
    if pod is None:
        raise NodeAuthRefused("not_pod_bound", f"the token of {account} is not bound to a pod, so it names no "
                                               "node; mount the projected ServiceAccount token of the DaemonSet pod")
    return Caller(account, (account.split("/")[0], pod), node)


class TokenReviewer:
    def __init__(self, api: KubeApi, audience: str = DEFAULT_AUDIENCE,
                 node_accounts: tuple[str, ...] = DEFAULT_NODE_ACCOUNTS):
        self.api, self.audience, self.node_accounts = api, audience, tuple(node_accounts)

    async def node_of(self, token: Any) -> str:
        """The node a token speaks for, or NodeAuthRefused."""
        if not isinstance(token, str) or not token:
            raise NodeAuthRefused("no_token", "no ServiceAccount token in the request (and no node certificate)")
        from kubewatch.client import KubeApiError, describe
        try:
            review = await self.api.post(REVIEW_PATH, review_body(token, self.audience))
        except Exception as exc:  # the API server is away: refuse now, the caller retries
            raise NodeAuthRefused("review_failed", f"TokenReview failed: {describe(exc)}") from None
        caller = caller_from_review(review, self.audience, self.node_accounts)
        if caller.node:
            return caller.node
        ns, name = caller.pod
        try:
            pod = await self.api.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        except (KubeApiError, OSError) as exc:
            raise NodeAuthRefused("review_failed", f"reading the token's pod {ns}/{name} failed: {describe(exc)}") from None
        node = ((pod or {}).get("spec") or {}).get("nodeName")
        if not node:
            raise NodeAuthRefused("pod_not_found", f"the token's pod {ns}/{name} does not exist or is not scheduled")
        return node
