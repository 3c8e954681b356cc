#!/usr/bin/env bash
# Runs on the control-plane VM once every VM is up and ca.sh has run: installs the Gateway API CRDs (from
# upstream: they are not ours), Trellis with `trellis install`, and the demo app; then
# says how to reach it.
set -euo pipefail
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
kubectl() { k3s kubectl "$@"; }
gateway_api=${GATEWAY_API_VERSION:-v1.2.1}

for _ in $(seq 90); do
  [ "$(kubectl get nodes --no-headers 2>/dev/null | grep -c ' Ready')" -ge 3 ] && break; sleep 5
done
kubectl get nodes -o wide

kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$gateway_api/standard-install.yaml"

# the CLI installed by ca.sh; the control plane makes its CA Secret and publishes its root
/opt/trellis-cli/bin/trellis install --chart /vagrant/deploy/helm/trellis --kubeconfig "$KUBECONFIG" \
  --set image.pullPolicy=Never
kubectl -n trellis-system rollout status deployment/trellis-controlplane --timeout=300s
kubectl -n trellis-system rollout status daemonset/trellis-node --timeout=300s

kubectl apply -f /vagrant/examples/kubernetes/demo.yaml
kubectl apply -f /vagrant/examples/kubernetes/policies.yaml
kubectl -n demo rollout status deployment/web --timeout=300s
kubectl -n demo rollout status deployment/sleep --timeout=300s
kubectl -n demo get pods -o wide

cat <<'TXT'

Trellis is running on a 3-node k3s cluster. Try it:
  vagrant ssh cp
  sudo k3s kubectl -n demo exec deploy/sleep -- curl -s http://web.demo/hi         # VIP -> HBONE -> web
  sudo k3s kubectl -n legacy exec deploy/legacy -- curl -m 3 http://web.demo/      # refused: STRICT + DENY
  sudo k3s kubectl -n trellis-system logs ds/trellis-node -c ztunnel
  sudo /opt/trellis-cli/bin/trellis uninstall --chart /vagrant/deploy/helm/trellis --kubeconfig /etc/rancher/k3s/k3s.yaml
TXT
