#!/usr/bin/env bash
# Runs on the control-plane VM before the mesh is installed: the Trellis CLI from this
# checkout (with the chart renderer, helm-python-sdk) and the mesh's namespace. No CA and
# no node credentials are made here: the control plane creates its CA in the Secret
# `trellis-ca` on first start (or uses an intermediate you put in `cacerts`), and ztunnel,
# the node agent and waypoints authenticate with their pods' ServiceAccount tokens
# (TokenReview), trusting the root the control plane publishes in `trellis-ca-root-cert`.
set -euo pipefail
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
kubectl() { k3s kubectl "$@"; }

[ -x /opt/trellis-cli/bin/trellis ] || python3 -m venv /opt/trellis-cli
/opt/trellis-cli/bin/pip install -q "/vagrant[deploy]"
kubectl create namespace trellis-system --dry-run=client -o yaml | kubectl apply -f -
