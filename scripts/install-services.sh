#!/usr/bin/env bash
# Install (from Debian) the real servers the test suite starts: PostgreSQL, Ceph RGW (S3),
# Slurm (slurmctld, slurmd and the client tools), OpenSSH (a Slurm login node),
# libnss-myhostname (*.localhost for S3 virtual-host addressing tests), bubblewrap (the sandbox
# module jobs run in on the server and on workers that ask for it),
# Chromium (the dashboard's end-to-end tests drive it with Playwright; never `playwright install`),
# nginx (the load balancer in front of several servers in the scale-out tests),
# Node.js and npm (the OpenID provider of the sign-in tests: the `oidc-provider` package from the
# npm registry, installed into tests/oidc/node_modules from its lock file). WebDAV (wsgidav) and
# Ray are Python packages installed by `make install`.
# Each test session starts them on free loopback ports and stops them by PID.
set -euo pipefail
need=()
for tool in ceph-mon ceph-osd radosgw; do
  command -v "$tool" >/dev/null 2>&1 || { need+=(radosgw ceph-mon ceph-osd); break; }
done
for tool in slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null 2>&1 || { need+=(slurm-wlm slurm-client); break; }
done
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
getent hosts forgehub-probe.localhost >/dev/null 2>&1 || need+=(libnss-myhostname)
[ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 || need+=(openssh-server openssh-client)
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
oidc_provider() {  # the npm packages of the test OpenID provider, from the lock file
  local dir
  dir="$(dirname "$0")/../tests/oidc"
  [ -d "$dir/node_modules/oidc-provider" ] && return 0
  echo "services: installing the test OpenID provider (npm ci in tests/oidc)"
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
}
if [ ${#need[@]} -eq 0 ]; then
  oidc_provider
  echo "services: all installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "services: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
oidc_provider
