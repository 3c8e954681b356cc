#!/usr/bin/env bash
# Runs on the host once every VM is up (the Vagrantfile's trigger): the cluster's CA and
# node credentials on cp (ca.sh), each worker's credential carried to it, then the mesh and
# the demo (mesh.sh). Vagrant finds the project from the current directory, as `vagrant up` did.
set -euo pipefail
vagrant ssh cp -c 'sudo bash /vagrant/deploy/vagrant/ca.sh'
for node in worker1 worker2; do
  # base64: `vagrant ssh -c` may run under a terminal, which would mangle raw bytes
  creds=$(vagrant ssh cp -c "sudo tar -C /var/lib/trellis-vagrant/nodes/$node -cz . | base64 -w0" 2>/dev/null | tr -d '\r')
  vagrant ssh "$node" -c "sudo mkdir -p /var/run/trellis/credentials && echo '$creds' | base64 -d | sudo tar -C /var/run/trellis/credentials -xz"
done
vagrant ssh cp -c 'sudo bash /vagrant/deploy/vagrant/mesh.sh'
