"""Packaging for Kubernetes: the CRDs generated from the resource model (crdgen), the Helm
chart rendered offline with helm-python-sdk (chart), server-side apply to an API server
(apply, kubeconfig) and the `trellis crds / install / uninstall` commands (commands)."""
