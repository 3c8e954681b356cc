#!/usr/bin/env bash
# Provisions one VM of the Vagrant cluster: kernel headers (bcc compiles the eBPF programs
# against them), k3s as server or agent, and the Trellis image built on the VM with buildah
# (no Docker daemon) and imported into k3s's containerd.
#   node.sh server|agent NODE_IP SERVER_IP TOKEN
set -euo pipefail
role=$1 node_ip=$2 server_ip=$3 token=$4
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends curl ca-certificates buildah fuse-overlayfs \
  "linux-headers-$(uname -r)" python3-venv >/dev/null

# the node agent needs the unified cgroup hierarchy and bpffs (Debian 12 has both by default)
test -f /sys/fs/cgroup/cgroup.controllers || { echo "node.sh: cgroup v2 is required" >&2; exit 1; }
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

common=(--node-ip "$node_ip" --flannel-iface eth1)
if [ "$role" = server ]; then
  curl -sfL https://get.k3s.io | K3S_TOKEN="$token" INSTALL_K3S_EXEC="server" sh -s - \
    "${common[@]}" --disable traefik --disable servicelb --write-kubeconfig-mode 0644 --tls-san "$server_ip"
else
  curl -sfL https://get.k3s.io | K3S_TOKEN="$token" K3S_URL="https://$server_ip:6443" sh -s - "${common[@]}"
fi

# the image, from this checkout (synced to /vagrant), into containerd's k8s.io namespace
tag=trellis/trellis:0.1.0
buildah bud --storage-driver vfs --layers -f /vagrant/deploy/Dockerfile -t "$tag" /vagrant
rm -f /tmp/trellis.tar
buildah push --storage-driver vfs "$tag" "docker-archive:/tmp/trellis.tar:docker.io/$tag"
for _ in $(seq 60); do [ -S /run/k3s/containerd/containerd.sock ] && break; sleep 2; done
k3s ctr --namespace k8s.io images import /tmp/trellis.tar
echo "node.sh: $(hostname) is a k3s $role with $tag"
