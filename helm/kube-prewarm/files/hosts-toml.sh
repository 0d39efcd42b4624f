#!/bin/sh
# Points containerd at the node-local kube-prewarm mirror by writing one hosts.toml per
# registry into containerd's registry config_path (CRI `registry.config_path`, e.g.
# /etc/containerd/certs.d). Run by the agent container: `install` on start (postStart),
# `uninstall` on stop (preStop), so an uninstalled or stopped agent leaves no entries.
#
#   hosts-toml.sh install   <certs-dir> <mirror-url> <owner> <registries> [<plain-http-registries>]
#   hosts-toml.sh uninstall <certs-dir> <owner>
#
# registries: comma-separated hosts (host or host:port; "_default" = every registry
# without a file of its own). Each file lists the mirror first and the upstream as
# `server`: containerd falls back to the upstream whenever the mirror fails or is down.
#
# Only files carrying this owner's marker line are ever replaced or removed: a hosts.toml
# someone else wrote is left alone (and reported on stderr). Files are written to a temp
# name in the same directory and renamed, so containerd (which re-reads them on every
# pull) never sees half a file.
set -eu

usage() {
  echo "usage: $0 install <certs-dir> <mirror-url> <owner> <registries> [<plain-http-registries>]" >&2
  echo "       $0 uninstall <certs-dir> <owner>" >&2
  exit 2
}

marker() { echo "# managed-by: kube-prewarm ($1)"; }

# True when $1 (a hosts.toml) starts with the owner's marker.
ours() { [ -f "$1" ] && [ "$(head -n 1 "$1")" = "$(marker "$2")" ]; }

valid_host() {
  case $1 in
    _default) return 0 ;;
    "" | *[!A-Za-z0-9.:-]* | .* | *..*) return 1 ;;
  esac
  return 0
}

# The upstream URL containerd falls back to.
upstream() {
  host=$1 plain=$2
  case $host in
    docker.io) echo "https://registry-1.docker.io"; return ;;
  esac
  scheme=https
  case $host in
    localhost | localhost:* | 127.* | '[::1]'*) scheme=http ;;
  esac
  case ",$plain," in
    *",$host,"*) scheme=http ;;
  esac
  echo "$scheme://$host"
}

install() {
  dir=$1 mirror=$2 owner=$3 registries=$4 plain=${5:-}
  case $mirror in
    http://* | https://*) ;;
    *) echo "hosts-toml: mirror URL must be http(s)://host:port, got '$mirror'" >&2; exit 2 ;;
  esac
  mkdir -p "$dir"
  wanted=","
  set -f # no globbing of the host list
  for host in $(echo "$registries" | tr ',' ' '); do
    if ! valid_host "$host"; then
      echo "hosts-toml: skipping invalid registry host '$host'" >&2
      continue
    fi
    wanted="$wanted$host,"
    file="$dir/$host/hosts.toml"
    if [ -e "$file" ] && ! ours "$file" "$owner"; then
      echo "hosts-toml: $file exists and was not written by kube-prewarm ($owner): left as it is" >&2
      continue
    fi
    mkdir -p "$dir/$host"
    tmp="$dir/$host/.hosts.toml.kube-prewarm.$$"
    {
      marker "$owner"
      echo "# The node-local kube-prewarm mirror first; the upstream when it fails."
      if [ "$host" != "_default" ]; then
        echo "server = \"$(upstream "$host" "$plain")\""
      fi
      echo ""
      echo "[host.\"$mirror\"]"
      echo "  capabilities = [\"pull\", \"resolve\"]"
    } >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$file"
    echo "hosts-toml: wrote $file" >&2
  done
  set +f
  # Registries dropped from the list since the last install: remove our files for them.
  for file in "$dir"/*/hosts.toml; do
    [ -f "$file" ] || continue
    host=$(basename "$(dirname "$file")")
    case $wanted in *",$host,"*) continue ;; esac
    if ours "$file" "$owner"; then
      rm -f "$file"
      rmdir "$dir/$host" 2>/dev/null || true
      echo "hosts-toml: removed $file (registry no longer mirrored)" >&2
    fi
  done
}

uninstall() {
  dir=$1 owner=$2
  [ -d "$dir" ] || return 0
  for file in "$dir"/*/hosts.toml; do
    [ -f "$file" ] || continue
    if ours "$file" "$owner"; then
      rm -f "$file"
      rmdir "$(dirname "$file")" 2>/dev/null || true
      echo "hosts-toml: removed $file" >&2
    fi
  done
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
  install) [ $# -ge 4 ] && [ $# -le 5 ] || usage; install "$@" ;;
  uninstall) [ $# -eq 2 ] || usage; uninstall "$@" ;;
  *) usage ;;
esac
