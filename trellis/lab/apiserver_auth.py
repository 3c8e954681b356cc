"""The API-server stand-in's authentication APIs (mixed into apiserver.ApiServerStandIn),
in kube-apiserver's wire format (authentication.k8s.io/v1):

- TokenReview `POST /apis/authentication.k8s.io/v1/tokenreviews` -> 201 with `status`
  {authenticated, audiences, user {username system:serviceaccount:NS:SA, groups, extra
  with the pod-name, pod-uid and node-name claims}} or {authenticated: false, error};
- TokenRequest `POST /api/v1/namespaces/NS/serviceaccounts/SA/token` (what the kubelet
  asks for a pod's projected ServiceAccount token) -> 201 with `status` {token,
  expirationTimestamp}; the ServiceAccount must exist (404), `expirationSeconds` be at
  least 600 (422, as kube-apiserver's validation), a bound Pod exist (404) with the
  uid given (409). Its token is then reviewed like a real one: it expires, and it stops
  authenticating when its pod is gone or replaced."""
from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
from dataclasses import dataclass

from .apiserver_pods import PATH_OF, _status

MIN_EXPIRATION = 600        # kube-apiserver refuses shorter projected tokens
DEFAULT_EXPIRATION = 3600


@dataclass
class Token:
    """What the API server knows of a ServiceAccount token (bound to a pod on a node).
    `pod_uid` set (a token the TokenRequest API issued, as the kubelet asks for a projected
    one): the review checks, as kube-apiserver does, that the bound pod still exists with
    that uid; `expires` (wall-clock seconds) ends it. Tokens given without a uid (the tests'
    and the lab's node tokens) name a pod the stand-in need not serve."""
    namespace: str
    service_account: str
    pod: str | None = None
    node: str | None = None
    audiences: tuple = ("trellis-ca",)
    expired: bool = False
    pod_uid: str | None = None
    expires: float | None = None

    def review(self, audiences: list, pods: dict | None = None) -> dict:
        if self.expired or (self.expires is not None and time.time() >= self.expires):
            return {"authenticated": False, "error": "[invalid bearer token, service account token has expired]"}
        if audiences and not set(audiences) & set(self.audiences):
            return {"authenticated": False, "error": "[invalid bearer token, token audiences "
                                                     f"{list(self.audiences)} is invalid for the target audiences {audiences}]"}
        pod = (pods or {}).get((self.namespace, self.pod)) if self.pod else None
        if self.pod and self.pod_uid:
            if pod is None:   # kube-apiserver's words (pkg/serviceaccount/claims.go)
                return {"authenticated": False, "error": "[invalid bearer token, service account token has been invalidated]"}
            if pod["metadata"]["uid"] != self.pod_uid:
                return {"authenticated": False, "error": f"[invalid bearer token, pod UID ({pod['metadata']['uid']}) does "
                                                         f"not match service account pod ref claim ({self.pod_uid})]"}
        extra = {}
        if self.pod:
            extra["authentication.kubernetes.io/pod-name"] = [self.pod]
            uid = self.pod_uid or (pod["metadata"]["uid"] if pod else str(uuid.uuid5(uuid.NAMESPACE_DNS, self.pod)))
            extra["authentication.kubernetes.io/pod-uid"] = [uid]
        if self.node:
            extra["authentication.kubernetes.io/node-name"] = [self.node]
        return {"authenticated": True, "audiences": list(audiences or self.audiences),
                "user": {"username": f"system:serviceaccount:{self.namespace}:{self.service_account}",
                         "groups": ["system:serviceaccounts", f"system:serviceaccounts:{self.namespace}",
                                    "system:authenticated"], "extra": extra}}


class AuthApis:
    """Mixed into ApiServerStandIn: uses its objects and tokens."""

    def token_review(self, req: dict) -> tuple[int, dict]:
        spec = req.get("spec") or {}
        token = self.tokens.get(spec.get("token"))
        status = token.review(spec.get("audiences") or [], self.objects.get(PATH_OF["Pod"], {})) if token else \
            {"authenticated": False, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}
        return 201, {**req, "status": status}

    def token_request(self, ns: str, sa: str, req: dict) -> tuple[int, dict]:
        if (ns, sa) not in self.objects.get(PATH_OF["ServiceAccount"], {}):
            return 404, _status(404, "NotFound", f'serviceaccounts "{sa}" not found')
        spec = req.get("spec") or {}
        seconds = spec.get("expirationSeconds", DEFAULT_EXPIRATION)
        if not isinstance(seconds, int) or seconds < MIN_EXPIRATION:
            return 422, _status(422, "Invalid", f'TokenRequest.authentication.k8s.io "{sa}" is invalid: '
                                f"spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration "
                                "less than 10 minutes")
        bound = spec.get("boundObjectRef") or {}
        pod_name = pod_uid = node = None
        if bound:
            if bound.get("kind") != "Pod":
                return 422, _status(422, "Invalid", f"spec.boundObjectRef.kind: Unsupported value: {bound.get('kind')!r}")
            pod = self.objects.get(PATH_OF["Pod"], {}).get((ns, bound.get("name")))
            if pod is None:
                return 404, _status(404, "NotFound", f'pods "{bound.get("name")}" not found')
            if bound.get("uid") and bound["uid"] != pod["metadata"]["uid"]:
                return 409, _status(409, "Conflict", f"the UID in the bound object reference ({bound['uid']}) does not "
                                    f"match the UID in record. The object might have been deleted and then recreated")
            pod_name, pod_uid = pod["metadata"]["name"], pod["metadata"]["uid"]
            node = (pod.get("spec") or {}).get("nodeName")
        audiences = tuple(spec.get("audiences") or ("https://kubernetes.default.svc.cluster.local",))
        value, expires = secrets.token_urlsafe(32), time.time() + seconds
        self.tokens[value] = Token(ns, sa, pod=pod_name, node=node, audiences=audiences, pod_uid=pod_uid,
                                   expires=expires)
        stamp = dt.datetime.fromtimestamp(expires, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                     "metadata": {"name": sa, "namespace": ns, "creationTimestamp": None},
                     "spec": {**spec, "audiences": list(audiences), "expirationSeconds": seconds},
                     "status": {"token": value, "expirationTimestamp": stamp}}
