"""Wire contracts between components, sans-IO: each message is a frozen dataclass, built
and parsed by the same module on both sides (docs/internals.md).

- `zds`: node agent <-> ztunnel handoff (SEQPACKET + SCM_RIGHTS)
- `watch`: the control plane API (sign, and the watch stream for nodes and waypoints)
- `origdst`: the original-destination BPF map's key/value layout (bpf/include/maps.h)
"""


class WireError(ValueError):
    """A message that breaks its contract; the text names the message and the field."""
