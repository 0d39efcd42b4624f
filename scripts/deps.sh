#!/usr/bin/env bash
# Installs what kube-prewarm's demo, tests and benchmarks need on a Debian 12 machine:
# Debian packages (registry, Redis, skopeo, containerd, ...), pinned Go tools (helm,
# etcd, crane, CoreDNS and the Kubernetes binaries; cached in ~/.cache/kube-prewarm-testbin)
# and npm packages. The Go builds (about 25 minutes cold on 2 cores, seconds when cached)
# run in the background while apt and npm work. Idempotent: a second run only checks.
#   scripts/deps.sh        everything (tests, CI)
#   scripts/deps.sh demo   just what `npm run demo` needs
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-all}

t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }
go_pid=
if [ "$profile" = all ]; then
  go_log=$(mktemp)
  bash scripts/go-tools.sh helm etcd crane >"$go_log" 2>&1 &
  go_pid=$!
  # The Kubernetes binaries and CoreDNS (~25 min cold, seconds when cached) build on in the
  # background after this script ends; scripts/test.sh runs the tests that do not need them
  # meanwhile and waits for this build (its state: $KP_TESTBIN/.k8s-build.{log,rc}).
  bin_dir=${KP_TESTBIN:-$HOME/.cache/kube-prewarm-testbin}
  mkdir -p "$bin_dir"
  rm -f "$bin_dir/.k8s-build.rc"
  (bash scripts/go-tools.sh kubernetes coredns >"$bin_dir/.k8s-build.log" 2>&1; echo $? >"$bin_dir/.k8s-build.rc") &
  disown
fi

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

echo "deps: Debian packages ready after $(elapsed)" >&2

# npm ci also builds dist/ (the `prepare` script); skip it when the lockfile is unchanged.
stamp=node_modules/.kp-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
else
  npm run --silent build
fi
echo "deps: npm packages ready after $(elapsed)" >&2

if [ -n "$go_pid" ]; then
  if ! wait "$go_pid"; then
    echo "deps: scripts/go-tools.sh failed:" >&2
    tail -n 60 "$go_log" >&2
    exit 1
  fi
  grep '^building' "$go_log" >&2 || true
  rm -f "$go_log"
  echo "deps: helm, etcd, crane ready after $(elapsed) (Kubernetes binaries: see scripts/test.sh)" >&2
fi
