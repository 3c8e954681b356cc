#!/usr/bin/env bash
# Runs on the host once every VM is up (the Vagrantfile's trigger): the CLI on cp (ca.sh),
# then the mesh and the demo (mesh.sh). Nothing is carried to the workers: their ztunnels
# authenticate with ServiceAccount tokens. Vagrant finds the project from the current
# directory, as `vagrant up` did.
set -euo pipefail
vagrant ssh cp -c 'sudo bash /vagrant/deploy/vagrant/ca.sh'
vagrant ssh cp -c 'sudo bash /vagrant/deploy/vagrant/mesh.sh'
