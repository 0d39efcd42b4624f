# shellcheck shell=bash
# Writes an OCI image layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
# with deterministic layers: sourced by scripts/build-image.sh. Functions return their
# results in OCI_* variables (bash has no better way that keeps `set -e` working).
#
# A layer is a tar of a staged directory: entries sorted by name (C locale), every entry's
# mtime set to one given time, owner 0:0 numeric except listed paths, no atime/ctime/xattrs,
# hard links stored as files, pax headers named without the PID; then `gzip -n` (no name,
# no time). Same tree, same time, same gzip: same digest. Compressed layers are cached by
# their diff_id (the uncompressed tar's sha256) in $OCI_LAYER_CACHE, so a rebuild only
# compresses layers whose content changed.

OCI_LAYER_CACHE=${OCI_LAYER_CACHE:-}
OCI_NO_LAYER_CACHE=${OCI_NO_LAYER_CACHE:-0}

readonly OCI_MT_INDEX=application/vnd.oci.image.index.v1+json
readonly OCI_MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
readonly OCI_MT_CONFIG=application/vnd.oci.image.config.v1+json
readonly OCI_MT_LAYER=application/vnd.oci.image.layer.v1.tar+gzip

oci_init() { # <layout>
  mkdir -p "$1/blobs/sha256"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$1/oci-layout"
}

# oci_layer <layout> <dir> <mtime> [<path>:<uid>:<gid>]...
# Sets OCI_DIFF_ID, OCI_DIGEST, OCI_SIZE (compressed), OCI_TAR_SIZE.
oci_layer() {
  local layout=$1 dir=$2 mtime=$3
  shift 3
  local tmp
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/oci-layer.XXXXXX")
  local tarflags=(--format=posix
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime
    --mtime="@$mtime" --numeric-owner --hard-dereference --no-recursion
    --no-acls --no-xattrs --no-selinux --verbatim-files-from -C "$dir")
  (cd "$dir" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) >"$tmp/all"
  local owned=() spec
  for spec in "$@"; do owned+=("${spec%%:*}"); done
  if [ ${#owned[@]} -gt 0 ]; then
    printf '%s\n' "${owned[@]}" | LC_ALL=C sort >"$tmp/owned"
    LC_ALL=C comm -23 "$tmp/all" "$tmp/owned" >"$tmp/list"
  else
    cp "$tmp/all" "$tmp/list"
  fi
  tar --create --file="$tmp/layer.tar" "${tarflags[@]}" --owner=0 --group=0 --files-from="$tmp/list"
  local path uid gid
  for spec in "$@"; do
    IFS=: read -r path uid gid <<<"$spec"
    [ -e "$dir/$path" ] || { echo "oci_layer: no $path in $dir" >&2; return 1; }
    tar --append --file="$tmp/layer.tar" "${tarflags[@]}" --owner="$uid" --group="$gid" -- "$path"
  done
  OCI_TAR_SIZE=$(stat -c %s "$tmp/layer.tar")
  OCI_DIFF_ID=sha256:$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  local cached=
  [ -z "$OCI_LAYER_CACHE" ] || cached=$OCI_LAYER_CACHE/${OCI_DIFF_ID#sha256:}.tar.gz
  if [ -n "$cached" ] && [ "$OCI_NO_LAYER_CACHE" != 1 ] && [ -s "$cached" ]; then
    touch "$cached"
    cp "$cached" "$tmp/layer.tar.gz"
  else
    gzip -n -6 -c "$tmp/layer.tar" >"$tmp/layer.tar.gz"
    if [ -n "$cached" ]; then
      mkdir -p "$OCI_LAYER_CACHE"
      cp "$tmp/layer.tar.gz" "$cached.tmp.$$" && mv -f "$cached.tmp.$$" "$cached"
    fi
  fi
  OCI_SIZE=$(stat -c %s "$tmp/layer.tar.gz")
  OCI_DIGEST=sha256:$(sha256sum "$tmp/layer.tar.gz" | cut -d' ' -f1)
  mv -f "$tmp/layer.tar.gz" "$layout/blobs/sha256/${OCI_DIGEST#sha256:}"
  rm -rf "$tmp"
}

# oci_json_blob <layout> <json>: stores the bytes of <json> (no trailing newline) as a blob.
# Sets OCI_DIGEST, OCI_SIZE.
oci_json_blob() {
  local layout=$1 json=$2 tmp
  tmp=$(mktemp "${TMPDIR:-/tmp}/oci-blob.XXXXXX")
  printf '%s' "$json" >"$tmp"
  OCI_SIZE=$(stat -c %s "$tmp")
  OCI_DIGEST=sha256:$(sha256sum "$tmp" | cut -d' ' -f1)
  mv -f "$tmp" "$layout/blobs/sha256/${OCI_DIGEST#sha256:}"
}

# oci_descriptor <mediaType> <digest> <size> [<extra json object>]
oci_descriptor() {
  local extra='{}'
  [ $# -lt 4 ] || extra=$4
  jq -n -c -j --arg mt "$1" --arg d "$2" --argjson s "$3" --argjson extra "$extra" \
    '{mediaType: $mt, digest: $d, size: $s} + $extra'
}
