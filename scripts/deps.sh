#!/usr/bin/env bash
# Installs what kube-prewarm's demo, tests and benchmarks need on a Debian 12 machine:
# Debian packages (registry, Redis, skopeo, containerd, ...), pinned Go tools (helm,
# etcd, crane, kube-apiserver; cached in ~/.cache/kube-prewarm-testbin) and npm packages.
# Idempotent: a second run only checks.
#   scripts/deps.sh        everything (tests, CI)
#   scripts/deps.sh demo   just what `npm run demo` needs
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-all}

apt_pkgs=(docker-registry skopeo)
if [ "$profile" = all ]; then
  apt_pkgs+=(redis-server umoci containerd runc containernetworking-plugins busybox-static iproute2 iptables util-linux libnetfilter-queue-dev apache2-utils openssl jq gcc binutils)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "deps: apt-get install ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$profile" = all ]; then
  bash scripts/go-tools.sh >/dev/null
fi

# npm ci also builds dist/ (the `prepare` script); skip it when the lockfile is unchanged.
stamp=node_modules/.kp-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
else
  npm run --silent build
fi
