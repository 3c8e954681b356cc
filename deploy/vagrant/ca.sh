#!/usr/bin/env bash
# Runs on the control-plane VM before the mesh is installed: the Trellis CLI from this
# checkout, one CA for the cluster (kept in the Secret `trellis-ca`, which every control
# plane replica copies in), and a bootstrap credential per node, the way `trellis lab up`
# issues them. A bridge until ztunnel authenticates with its ServiceAccount token
# (TokenReview); cluster.sh carries each worker's credential to it.
set -euo pipefail
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
kubectl() { k3s kubectl "$@"; }
state=/var/lib/trellis-vagrant

# the CLI and the control plane's code, with the chart renderer (helm-python-sdk)
[ -x /opt/trellis-cli/bin/trellis ] || python3 -m venv /opt/trellis-cli
/opt/trellis-cli/bin/pip install -q "/vagrant[deploy]"

for node in $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}'); do
  /opt/trellis-cli/bin/python -m controlplane --ca-dir "$state/ca" --issue-node-credential "$node" --out "$state/nodes/$node"
done
mkdir -p /var/run/trellis/credentials
cp "$state/nodes/$(hostname)"/* /var/run/trellis/credentials/

kubectl create namespace trellis-system --dry-run=client -o yaml | kubectl apply -f -
kubectl -n trellis-system create secret generic trellis-ca \
  --from-file="$state/ca/root-cert.pem" --from-file="$state/ca/root-key.pem" --dry-run=client -o yaml | kubectl apply -f -
