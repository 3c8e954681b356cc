"""ztunnel's view of the mesh: one module per resource kind, indexed by `store.State`."""
from .policies import AuthzPolicy, Operation, Rule, Source
from .services import Service, ServicePort
from .store import State
from .workloads import Workload

__all__ = ["AuthzPolicy", "Operation", "Rule", "Source", "Service", "ServicePort", "State", "Workload"]
