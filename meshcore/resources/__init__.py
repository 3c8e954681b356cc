"""The resource model: Kubernetes-style objects, validated with errors that name the file,
the object and the field path. See kinds.py for the kinds and their typed specs."""
from .errors import ResourceError, ResourceInvalid
from .kinds import (KINDS, AuthorizationPolicySpec, Condition, NamespaceSpec, OpaqueSpec, Operation, PeerAuthenticationSpec,
                    Rule, ServicePort, ServiceSpec, Source, TargetRef, WorkloadEntrySpec)
from .model import Resource, from_dict
from .selectors import matches

AMBIENT_LABEL = "trellis.dev/dataplane-mode"
WAYPOINT_LABEL = "trellis.dev/use-waypoint"
ROOT_NAMESPACE = "trellis-system"

# The YAML loader (and PyYAML) only for processes that read files: the control plane and
# the CLI. ztunnel gets typed objects as JSON and stays 1.4 MiB smaller without it.
_LOADER = {"LoadResult", "check_references", "load_dir", "load_file", "parse_documents"}


def __getattr__(name: str):
    if name in _LOADER:
        from . import loader
        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AMBIENT_LABEL", "KINDS", "ROOT_NAMESPACE", "WAYPOINT_LABEL", "AuthorizationPolicySpec", "Condition", "LoadResult",
    "NamespaceSpec", "OpaqueSpec", "Operation", "PeerAuthenticationSpec", "Resource", "ResourceError",
    "ResourceInvalid", "Rule", "ServicePort", "ServiceSpec", "Source", "TargetRef", "WorkloadEntrySpec",
    "check_references", "from_dict", "load_dir", "load_file", "matches", "parse_documents",
]
