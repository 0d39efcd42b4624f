#!/usr/bin/env bash
# Builds the pinned Go tools the tests and benchmarks need (helm, etcd, crane,
# kube-apiserver) into a cache directory and reuses them on later runs.
# Usage: scripts/go-tools.sh [tool...]   (default: all). Prints the bin dir.
set -euo pipefail
BIN="${KP_TESTBIN:-$HOME/.cache/kube-prewarm-testbin}"
mkdir -p "$BIN"
HELM_VERSION=v3.22.0
ETCD_VERSION=v3.6.16
CRANE_VERSION=v0.22.1
K8S_VERSION=1.34.2

want=("$@"); [ ${#want[@]} -eq 0 ] && want=(helm etcd crane kube-apiserver)

build_go() { # name module@version [package]
  local name=$1 mod=$2 pkg=${3:-} stamp="$BIN/.$1.version"
  if [ -x "$BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$mod" ]; then return; fi
  echo "building $name ($mod)" >&2
  if [ -z "$pkg" ]; then
    GOBIN="$BIN" go install "$mod"
  else
    # Modules whose go.mod has replace directives cannot be `go install`ed:
    # build them from a scratch module that requires the released version.
    local dir; dir=$(mktemp -d)
    (cd "$dir" && go mod init kpbuild >/dev/null 2>&1 && go get "$mod" >/dev/null && go build -o "$BIN/$name" "$pkg")
    rm -rf "$dir"
  fi
  echo "$mod" >"$stamp"
}

build_apiserver() {
  local stamp="$BIN/.kube-apiserver.version"
  if [ -x "$BIN/kube-apiserver" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$K8S_VERSION" ]; then return; fi
  echo "building kube-apiserver v$K8S_VERSION (several minutes on 2 cores)" >&2
  local dir; dir=$(mktemp -d)
  local minor="0.${K8S_VERSION#1.}"
  cat >"$dir/go.mod" <<MOD
module kpbuild

go 1.24

require k8s.io/kubernetes v$K8S_VERSION
MOD
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
    kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet
    metrics mount-utils pod-security-admission sample-apiserver)
  for s in "${staging[@]}"; do
    echo "replace k8s.io/$s => k8s.io/$s v$minor" >>"$dir/go.mod"
  done
  cat >"$dir/tools.go" <<'GO'
//go:build tools
package kpbuild

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
   cd "$dir" && GOFLAGS=-mod=mod go build -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
  echo "$K8S_VERSION" >"$stamp"
  rm -rf "$dir"
}

for t in "${want[@]}"; do
  case $t in
    helm) build_go helm helm.sh/helm/v3/cmd/helm@$HELM_VERSION ;;
    etcd) build_go etcd go.etcd.io/etcd/server/v3@$ETCD_VERSION go.etcd.io/etcd/server/v3 ;;
    crane) build_go crane github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION ;;
    kube-apiserver) build_apiserver ;;
    *) echo "unknown tool $t" >&2; exit 2 ;;
  esac
done
echo "$BIN"
