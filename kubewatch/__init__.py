"""The Kubernetes API client shared by the components that talk to a cluster (the control
plane, the node agent): configuration and authentication through lightkube, and our own
list/watch reflector under trio. Never imported by meshcore or ztunnel."""
